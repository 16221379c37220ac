"""A run config and a policy from a local Hugging Face checkpoint (for `init_from` and `r1jax import-hf`).

The model section is the HF architecture (`model.hf_io.read_hf_config`), every r1jax-only field at its
default; dotted overrides ("model.param_dtype=bfloat16", "sharding.expert=2") apply on top, as for a YAML
config. The weights come from `model.hf_io.import_params`, placed in their shards when given a mesh.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Sequence

from jax.sharding import Mesh

from r1jax.model.decoder import Policy
from r1jax.model.hf_config import model_fields
from r1jax.model.hf_io import HFCheckpoint, import_params, read_hf_config
from r1jax.rl.config import Config, config_from_dicts, parse_overrides
from r1jax.sharding.rules import Rules

log = logging.getLogger(__name__)


def hf_run_config(hf_dir: str | pathlib.Path, overrides: Sequence[str] = ()) -> tuple[Config, list[str]]:
    """(Config, notes): the HF architecture as the model section, then dotted `overrides`."""
    cfg, notes = read_hf_config(hf_dir)
    config = config_from_dicts({"model": model_fields(cfg)}, parse_overrides(overrides),
                               source=f"HF checkpoint {hf_dir}")
    return config, notes


def load_hf_policy(hf_dir: str | pathlib.Path, mesh: Mesh | None = None, rules: Rules | None = None,
                   overrides: Sequence[str] = ()) -> tuple[Config, Policy]:
    """(Config, Policy) from a local HF checkpoint directory; the notes go to the log. With a mesh, every
    parameter is placed directly in its shards (`rules` default to model.hf_io.import_params' default)."""
    config, notes = hf_run_config(hf_dir, overrides)
    for note in notes:
        log.warning("%s: %s", hf_dir, note)
    with HFCheckpoint(hf_dir) as ckpt:
        policy = import_params(ckpt, config.model, mesh, rules)
    return config, policy
