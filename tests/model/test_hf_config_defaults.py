"""A hub config.json's missing keys take transformers' own class defaults (independent reference)."""

import pytest
import transformers

from r1jax.model.hf_config import HF_DEFAULTS, from_hf_config, to_hf_config
from tests.model.tiny import DEEPSEEK

CLASSES = {"deepseek_v3": transformers.DeepseekV3Config, "qwen3_moe": transformers.Qwen3MoeConfig}
HF_NAMES = {"qwen3_moe": {"n_routed_experts": "num_experts"}}


@pytest.mark.parametrize("family", sorted(HF_DEFAULTS))
def test_every_default_is_transformers_class_default(family):
    reference = CLASSES[family]()
    for key, value in HF_DEFAULTS[family].items():
        theirs = getattr(reference, HF_NAMES.get(family, {}).get(key, key))
        assert value == theirs, (family, key, value, theirs)


def test_a_deepseek_config_without_routing_groups_takes_transformers_groups():
    hub = {k: v for k, v in to_hf_config(DEEPSEEK).items()
           if k not in ("n_group", "topk_group", "rms_norm_eps")} | {"n_routed_experts": 32}
    cfg, _ = from_hf_config(hub)
    ref = transformers.DeepseekV3Config()
    assert (cfg.n_group, cfg.topk_group, cfg.rms_norm_eps) == (ref.n_group, ref.topk_group, ref.rms_norm_eps)


def test_null_routing_groups_mean_no_groups():
    """`n_group: null` / `topk_group: null` in a hub config: routing without groups (1 and 1), not the class
    defaults' 8 and 4."""
    hub = to_hf_config(DEEPSEEK) | {"n_group": None, "topk_group": None}
    cfg, _ = from_hf_config(hub)
    assert (cfg.n_group, cfg.topk_group) == (1, 1)
