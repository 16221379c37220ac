"""The policy in and out of a run: the run's tokenizer, the policy a stage starts from, and the run's
checkpoints.

The run's tokenizer (`run_tokenizer`) is read from `tokenizer.path` when it is set; else, when the first
stage starts from a checkpoint that carries a tokenizer (`init_from_tokenizer`: a Hugging Face directory's
tokenizer.json or tokenizer.model; an r1jax checkpoint's saved copy, as a run keeps it in
`checkpoints/tokenizer`), that one, so a policy keeps the vocabulary its embeddings were trained on; else
r1jax trains a sentencepiece tokenizer on the run's data (also when the first stage's r1jax checkpoint carries
none: a run trains its tokenizer the same way from the same data). A Hugging Face directory without tokenizer
files is an error unless `tokenizer.path` is set: its embeddings are indexed by the ids of a tokenizer r1jax
cannot guess, and a tokenizer trained anew would silently train them under other ids. Every stage of a run shares
that tokenizer, so a later stage that starts from a checkpoint with another tokenizer is an error before the
first step (rl.train.preflight), unless `tokenizer.path` says which tokenizer to use.

A policy travels between stages as `(params, bias)`: the nnx States of its trainable parameters and of its
routing biases (rl.update.split_policy), with the graphdef that merges them. Checkpoints store it as one pure
state dict (`policy_state`), as `r1jax generate/eval/export-hf` read it.
"""

from __future__ import annotations

import pathlib
from typing import Any, Mapping

import jax
from flax import nnx

from r1jax.errors import UserError
from r1jax.model.config import ModelConfig
from r1jax.model.factory import abstract_policy, init_policy
from r1jax.model.tokenizer import FILE_NAME, TokenizerLike, is_tokenizer_dir, load_tokenizer
from r1jax.model.tokenizer_json import CONFIG_JSON, TOKENIZER_JSON
from r1jax.rl.checkpoint import find_tokenizer, load_policy
from r1jax.rl.config import Config, stage_config
from r1jax.rl.data import build_tokenizer
from r1jax.rl.hf_architecture import is_hf_dir
from r1jax.rl.hf_policy import import_hf_policy
from r1jax.rl.train.checkpointing import TrainCheckpointer, check_compatible
from r1jax.rl.train.config import StageConfig
from r1jax.rl.update import split_policy
from r1jax.sharding.params import abstract_sharded
from r1jax.sharding.rules import Rules


def init_from_tokenizer(init_from: str) -> TokenizerLike | None:
    """The tokenizer a stage's `init_from` checkpoint carries, or None when it carries none: a Hugging Face
    directory's own tokenizer files (none is a UserError: module docstring); an r1jax checkpoint's saved
    tokenizer (rl.checkpoint.find_tokenizer: in the step, beside the steps, as a run saves it, or in the run
    directory). A path that is no checkpoint is a UserError (rl.checkpoint_paths.resolve's). Called only when
    tokenizer.path is unset."""
    if not is_hf_dir(init_from):
        return find_tokenizer(init_from)
    if not is_tokenizer_dir(init_from):
        raise UserError(f"{init_from} is a Hugging Face checkpoint without tokenizer files (no {TOKENIZER_JSON} "
                        f"or {FILE_NAME}): its embeddings are indexed by the ids of the tokenizer it was trained "
                        f"with, which r1jax does not guess (a tokenizer trained on the run's data would give the "
                        f"rows other meanings); copy that tokenizer's files ({TOKENIZER_JSON}, {CONFIG_JSON}, ...) "
                        f"into it, or set tokenizer.path to a directory holding them")
    return load_tokenizer(init_from)


def run_tokenizer(config: Config) -> TokenizerLike:
    """The run's tokenizer (module docstring): `tokenizer.path`'s, else the first stage's `init_from`
    checkpoint's, else trained on the run's data."""
    first = config.stages[0] if config.stages else None
    if config.tokenizer.path is None and first is not None and first.init_from:
        try:
            carried = init_from_tokenizer(first.init_from)
        except UserError as err:
            raise UserError(f"stages[{first.name}].init_from={first.init_from!r}: {err}") from None
        if carried is not None:
            return carried
    return build_tokenizer(config.tokenizer, config.data)


def policy_state(graphdef, params, bias) -> dict:
    """The pure state dict of the policy (params, bias), as checkpoints store it."""
    return nnx.to_pure_dict(nnx.state(nnx.merge(graphdef, params, bias)))


def abstract_policy_state(model: ModelConfig, mesh, rules: Rules):
    """(graphdef, abstract nnx State, pure dict of sharded ShapeDtypeStructs: a restore target) of `model`."""
    graphdef, state = nnx.split(abstract_policy(model))
    return graphdef, state, nnx.to_pure_dict(abstract_sharded(state, mesh, rules))


def policy_from_state(pure: dict, model: ModelConfig, mesh, rules: Rules):
    """(params, bias) States from a pure policy-state dict (as checkpoints store it)."""
    graphdef, state, _ = abstract_policy_state(model, mesh, rules)
    nnx.replace_by_pure_dict(state, pure)
    _, params, bias = split_policy(nnx.merge(graphdef, state))
    return params, bias


def starting_policy(config: Config, index: int, stage: StageConfig, tokenizer: TokenizerLike, previous, mesh,
                    rules: Rules):
    """(graphdef, (params, bias)) a stage starts from: `init_from`, else a fresh one (the first stage, or a
    distilled student), else None: the previous stage's policy `previous` goes on."""
    model = stage_config(config, index).model
    if tokenizer.vocab_size > model.vocab_size:
        raise UserError(f"stages[{stage.name}]: model.vocab_size={model.vocab_size} is smaller than the "
                        f"tokenizer's {tokenizer.vocab_size} pieces")
    if stage.init_from and is_hf_dir(stage.init_from):  # converted to the stage's param_dtype
        try:
            policy = import_hf_policy(stage.init_from, model, mesh, rules)
        except UserError as err:
            raise UserError(f"stages[{stage.name}].init_from={stage.init_from!r}: {err}") from None
    elif stage.init_from:
        loaded, policy = load_policy(pathlib.Path(stage.init_from), mesh, rules)
        check_compatible(loaded, stage_config(config, index), stage.init_from)
    elif previous is None or stage.kind == "distill":  # a distilled student starts fresh
        policy = init_policy(model, config.seed + index, mesh, rules)
    else:
        return None
    graphdef, params, bias = split_policy(policy)
    return graphdef, (params, bias)


class RunCheckpoints:
    """The run's checkpoints (rl.train.checkpointing) and what every save of a stage adds: the policy, the
    config in effect at the stage (a student's opens as the student), the run's position and summary in
    `meta`, and a copy of the tokenizer beside them."""

    def __init__(self, checkpointer: TrainCheckpointer, config: Config, run_dir: pathlib.Path,
                 tokenizer: TokenizerLike, primary: bool):
        self.checkpointer, self.config, self.run_dir = checkpointer, config, run_dir
        self.tokenizer, self.primary = tokenizer, primary

    def save(self, index: int, stage: StageConfig, *, graphdef, policy, global_step: int, stage_step: int,
             summary: Mapping[str, Any], stage_done: bool, trees: Mapping[str, Any] | None = None,
             extra_meta: Mapping[str, Any] | None = None, metrics: Mapping[str, float] | None = None) -> None:
        """Start saving global step `global_step`: `policy` as `params`, the stage's `trees` (optimizer
        state, reference policy), and the meta a resume reads (`summary`: the run's, up to this save)."""
        meta = {"stage_index": index, "stage_name": stage.name, "stage_step": stage_step,
                "global_step": global_step, "stage_done": stage_done, "summary": summary,
                "devices": jax.device_count(), "processes": jax.process_count(), **(extra_meta or {})}
        trees = {"params": policy_state(graphdef, *policy), **(trees or {})}
        self.checkpointer.save(global_step, stage_config(self.config, index), trees, meta, metrics)
        if self.primary:  # so that `r1jax generate/eval/export-hf` open a checkpoint unaided
            self.tokenizer.save(self.run_dir / "checkpoints" / "tokenizer")

    def latest_step(self) -> int | None:
        return self.checkpointer.latest_step()

    def restore_config_and_meta(self, step: int) -> tuple[Config, dict]:
        return self.checkpointer.restore_config_and_meta(step)

    def restore_trees(self, step: int, targets: Mapping[str, Any]) -> dict:
        return self.checkpointer.restore_trees(step, targets)

    def has_tree(self, step: int, name: str) -> bool:
        return self.checkpointer.has_item(step, name)

    def restore_policy(self, step: int, model: ModelConfig, mesh, rules: Rules):
        """(graphdef, (params, bias)) of checkpoint `step`, restored into the mesh's shards."""
        abstract = abstract_policy_state(model, mesh, rules)[2]
        restored = self.restore_trees(step, {"params": abstract})["params"]
        graphdef = split_policy(abstract_policy(model))[0]
        return graphdef, policy_from_state(restored, model, mesh, rules)

    def raise_failed_save(self) -> None:
        self.checkpointer.raise_failed_save()

    def wait(self) -> None:
        self.checkpointer.wait()

    def close(self) -> None:
        self.checkpointer.close()
