"""A run config and a policy from a local Hugging Face checkpoint (for `init_from` and `r1jax import-hf`).

The model section is the HF architecture (rl.hf_architecture), param_dtype the dtype the checkpoint stores,
every other r1jax-only field at its default; dotted overrides ("model.param_dtype=float32",
"sharding.expert=2") apply on top, as for a YAML config, and an override of an architecture field must agree
with the checkpoint. The weights come from `model.hf_io.import_params`, placed in their shards when given a
mesh.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Sequence

from jax.sharding import Mesh

from r1jax.model.config import ModelConfig
from r1jax.model.decoder import Policy
from r1jax.model.hf_io import HFCheckpoint, import_params, read_hf_config
from r1jax.rl.config import Config, config_from_dicts, model_fields_given
from r1jax.rl.config_overrides import parse_overrides
from r1jax.rl.hf_architecture import hf_model
from r1jax.sharding.rules import Rules

log = logging.getLogger(__name__)


def hf_run_config(hf_dir: str | pathlib.Path, overrides: Sequence[str] = ()) -> tuple[Config, list[str]]:
    """(Config, notes): the schema's config with dotted `overrides`, on the HF architecture."""
    _, notes = read_hf_config(hf_dir)
    parsed = parse_overrides(overrides)
    config = config_from_dicts(parsed, source=f"HF checkpoint {hf_dir}")
    model = hf_model(config.model, hf_dir, model_fields_given(None, parsed, "overrides"))
    return dataclasses.replace(config, model=model), notes


def import_hf_policy(hf_dir: str | pathlib.Path, model: ModelConfig, mesh: Mesh | None = None,
                     rules: Rules | None = None) -> Policy:
    """The weights of `hf_dir` as a Policy of `model`, which must have the checkpoint's architecture (a
    UserError names a field that differs); they are cast to model.param_dtype (DeepSeek's router
    and routing bias: float32, model.moe.router_config). With a mesh, every
    parameter is placed directly in its shards (`rules` default to model.hf_io.import_params' default)."""
    hf_model(model, hf_dir)
    with HFCheckpoint(hf_dir) as ckpt:
        return import_params(ckpt, model, mesh, rules)


def load_hf_policy(hf_dir: str | pathlib.Path, mesh: Mesh | None = None, rules: Rules | None = None,
                   overrides: Sequence[str] = ()) -> tuple[Config, Policy]:
    """(Config, Policy) from a local HF checkpoint directory (`hf_run_config`); the notes go to the log."""
    config, notes = hf_run_config(hf_dir, overrides)
    for note in notes:
        log.warning("%s: %s", hf_dir, note)
    return config, import_hf_policy(hf_dir, config.model, mesh, rules)
