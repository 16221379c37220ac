"""The run's model when a stage starts from a Hugging Face directory: the architecture is its config.json's.

A stage with `init_from: HF_DIR` (a directory holding config.json) makes HF_DIR/config.json the source of
the architecture (`model.hf_config.architecture_fields` of its family). The config's `model` section then
needs only r1jax's own fields (`model.hf_config.R1JAX_FIELDS`: param_dtype, compute_dtype, moe_impl,
moe_block_size, remat, scan_layers, routing_bias_update_rate); an architecture field it does give must equal the
checkpoint's, else a UserError names it (`model.hidden_size: run.yaml says 64, HF_DIR/config.json says
2048`; a size key config.json lacks: `... config.json does not state hidden_size (transformers' default 2048)`).
`param_dtype`, unless the config gives it, is the dtype the checkpoint stores (a bfloat16 checkpoint
stays bfloat16). Fields only the other family reads keep the config's values.

`given` maps the model fields the user set to where they were set (a YAML file, an override); `None` means
every field of the model is the config's own, as in a resolved config (the checks before a stage starts).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Mapping, Sequence

from r1jax.errors import UserError
from r1jax.model.config import ModelConfig
from r1jax.model.hf_checkpoint import read_json
from r1jax.model.hf_config import architecture_fields, defaulted_sizes
from r1jax.model.hf_io import read_hf_config


def is_hf_dir(path: str | pathlib.Path) -> bool:
    """Whether `init_from` names a Hugging Face directory (config.json), not an r1jax checkpoint."""
    return (pathlib.Path(path) / "config.json").is_file()


def hf_model(model: ModelConfig, hf_dir: str | pathlib.Path, given: Mapping[str, str] | None = None) -> ModelConfig:
    """`model` on the architecture of `hf_dir/config.json` (module docstring); a UserError names every given
    architecture field that differs from the checkpoint's."""
    checkpoint, _ = read_hf_config(hf_dir)
    source = pathlib.Path(hf_dir) / "config.json"
    fields = architecture_fields(checkpoint.family)
    given = {f.name: "the config" for f in dataclasses.fields(model)} if given is None else given
    unstated = defaulted_sizes(read_json(source), checkpoint.family)  # (it "said 2048", a default, not the file)
    differ = [f"model.{name}: {where} says {getattr(model, name)!r}, {source} "
              + (f"does not state {unstated[name]}" if name in unstated else f"says {getattr(checkpoint, name)!r}")
              for name, where in given.items() if name in fields
              and _plain(getattr(model, name)) != _plain(getattr(checkpoint, name))]
    if differ:
        raise UserError("the Hugging Face checkpoint sets the architecture; drop these fields from the config "
                        "or start from a checkpoint that has them: " + "; ".join(differ))
    taken = {name: getattr(checkpoint, name) for name in fields}
    if "param_dtype" not in given:
        taken["param_dtype"] = checkpoint.param_dtype
    return dataclasses.replace(model, **taken)


def run_model(model: ModelConfig, stages: Sequence[Any], given: Mapping[str, str] | None) -> ModelConfig:
    """The run's model: `model` on the architecture of the HF directories its stages start from (all must
    have one architecture); `model` itself when no stage starts from one."""
    resolved, first = model, None
    for stage in stages:
        if not stage.init_from or not is_hf_dir(stage.init_from):
            continue
        where = f"stages[{stage.name}].init_from={stage.init_from!r}"
        try:
            candidate = hf_model(model, stage.init_from, given)
        except UserError as err:
            raise UserError(f"{where}: {err}") from None
        if first is not None and candidate != resolved:
            raise UserError(f"{where}: its architecture differs from that of {first}; a run trains one model")
        resolved, first = candidate, first or where
    return resolved


def _plain(value: Any) -> Any:
    """Sequences compare as tuples (a YAML list against config.json's list read into a tuple field)."""
    return tuple(value) if isinstance(value, (list, tuple)) else value
