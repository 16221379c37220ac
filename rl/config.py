"""The run config: typed, frozen dataclasses per subsystem, loaded from YAML with dotted overrides.

`load_config("tiny", ["model.num_hidden_layers=4"])` reads `configs/tiny.yaml` (or any YAML path), merges
it over the schema, then applies the overrides in order, through OmegaConf structured configs: an unknown key
or a value of the wrong type is a UserError naming the full key; each dataclass validates its values on
construction. When a stage starts from a Hugging Face directory (`init_from: HF_DIR`), the model's
architecture is that directory's config.json (rl.hf_architecture): the YAML gives only r1jax's own model
fields, and an architecture field it or an override gives must agree with the checkpoint.

Overrides (`dotted.key=value`), the merge over the schema and the finiteness check are rl.config_overrides.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Any, Sequence

import yaml as pyyaml
from omegaconf import OmegaConf

from r1jax.model.config import ModelConfig
from r1jax.errors import UserError
from r1jax.model.tokenizer import TokenizerConfig
from r1jax.rl.data.config import DataConfig
from r1jax.rl.grpo.config import GRPOConfig, OptimizerConfig
from r1jax.rl.hf_architecture import run_model
from r1jax.rl.rewards.config import PoolConfig, RewardsConfig
from r1jax.rl.config_checks import INT32_MAX, check_bool, check_top_k
from r1jax.rl.config_overrides import Overrides, build_structured, parse_overrides
from r1jax.rl.sampler import SamplingConfig
from r1jax.rl.train.config import CheckpointConfig, EvalConfig, StageConfig
from r1jax.rl.update import UpdateConfig
from r1jax.sharding.mesh import ShardingConfig

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
MAX_SEED = 2**53  # the run's seed: JAX keys of seed * 1000 + stage index (and seed + index) must fit int64


def _default(cls):
    return dataclasses.field(default_factory=cls)


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelConfig = _default(ModelConfig)
    sharding: ShardingConfig = _default(ShardingConfig)
    tokenizer: TokenizerConfig = _default(TokenizerConfig)
    data: DataConfig = _default(DataConfig)
    rewards: RewardsConfig = _default(RewardsConfig)
    reward_pool: PoolConfig = _default(PoolConfig)
    sampling: SamplingConfig = _default(SamplingConfig)
    grpo: GRPOConfig = _default(GRPOConfig)
    optimizer: OptimizerConfig = _default(OptimizerConfig)
    update: UpdateConfig = _default(UpdateConfig)
    eval: EvalConfig = _default(EvalConfig)
    checkpoint: CheckpointConfig = _default(CheckpointConfig)
    stages: list[StageConfig] = dataclasses.field(default_factory=lambda: [StageConfig()])
    seed: int = 0
    plots: bool = True  # plots/*.png; false: none drawn (metrics.jsonl and TensorBoard are written either way)

    def __post_init__(self) -> None:
        if type(self.seed) is not int or not -MAX_SEED <= self.seed <= MAX_SEED:
            raise UserError(f"seed={self.seed!r}: expected an integer in [-2^53, 2^53]")
        check_bool("plots", self.plots)
        if self.tokenizer.path is not None and not self.tokenizer.path.strip():  # was read as the directory '.'
            raise UserError(f"tokenizer.path={self.tokenizer.path!r}: expected a tokenizer directory (or null: the "
                            "first stage's init_from tokenizer, else one trained on the run's data)")
        self._check_rollout_sizes()
        self._check_overlong()
        if not self.stages:
            raise UserError("stages: empty; a run needs at least one stage (sft, grpo, rejection_sampling, distill)")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise UserError(f"stages: names must be unique, got {names}")
        for index, stage in enumerate(self.stages):
            _check_stage_data(self.stages, index, "teacher" if stage.kind == "distill" else "data_path")
            if stage.student_overrides:
                student_model(self.model, stage.student_overrides, where=f"stages[{stage.name}]")
        for stage in self.stages:
            if stage.kind == "grpo" and 0 < self.grpo.max_staleness >= stage.steps:
                # every batch of the stage would be drawn at its first step, all by its starting weights (and
                # held on the devices together, each checkpoint storing the whole queue); on policy (k = 0) a
                # stage of 0 steps only evaluates its start, as an sft one does
                raise UserError(f"grpo.max_staleness={self.grpo.max_staleness} is not below stage {stage.name}'s "
                                f"{stage.steps} steps: no batch of it can be that stale (from steps - 1 on, the "
                                f"whole stage is sampled at its first step, by its starting weights); lower it "
                                f"(1 or 2 is usual) or give the stage more steps")
        if self.sampling.devices and not self.grpo.max_staleness:
            # the sampler's devices generate the next batch while the trainer's update: with k = 0 each batch
            # waits for the update before it, so they would only idle in turn
            raise UserError(f"sampling.devices={self.sampling.devices}: needs grpo.max_staleness >= 1; at 0 "
                            "every batch is sampled by the weights of the update before it, so there is no "
                            "generation to overlap with an update (set sampling.devices=0)")

    def _check_overlong(self) -> None:
        """DAPO's overlong penalty reaches a sample only past rewards.max_length - overlong_buffer tokens: a
        stage that samples no more than that scores it 0 on every sample (the default 1024 - 256 against
        sampling.max_new_tokens=128 did, silently). L_max is the generation budget (DAPO §3.4)."""
        r = self.rewards
        if "overlong" not in r.names or r.weights[r.names.index("overlong")] == 0:
            return
        for stage in self.stages:
            if stage.kind not in ("grpo", "rejection_sampling"):
                continue
            budget = stage.new_tokens(self.sampling.max_new_tokens)
            if budget <= r.max_length - r.overlong_buffer:
                raise UserError(
                    f"rewards.max_length={r.max_length}: the overlong penalty starts after max_length - "
                    f"overlong_buffer = {r.max_length - r.overlong_buffer} tokens, but stage {stage.name} samples "
                    f"at most {budget}, so it would score 0 on every sample; set rewards.max_length to the "
                    f"generation budget ({budget}: DAPO's L_max) and rewards.overlong_buffer below it")

    def _check_rollout_sizes(self) -> None:
        """top-k within the vocabulary; a sampler call's rows x (largest prompt bucket + token budget) x experts
        per token within int32: the MoE dispatch indexes those token copies (grpo.group_size=1e11 overflowed); so
        is an SFT or distill forward's (a micro-batch's rows x max_sequence_length x experts per token)."""
        vocab, k, bucket = self.model.vocab_size, self.model.num_experts_per_tok, self.sampling.prompt_buckets[-1]
        for key, top_k in (("sampling.top_k", self.sampling.top_k), ("eval.top_k", self.eval.top_k)):
            check_top_k(key, top_k, vocab)
        new = self.sampling.max_new_tokens
        calls = [("grpo.prompts_per_step x grpo.group_size", self.grpo.prompts_per_step * self.grpo.group_size, new),
                 ("eval.batch_size x eval.samples", self.eval.batch_size * self.eval.samples, new)]
        calls += [(f"stages[{s.name}].batch_size x samples_per_prompt", s.batch_size * s.samples_per_prompt,
                   s.new_tokens(new)) for s in self.stages if s.kind == "rejection_sampling"]
        for what, rows, new in calls:
            if rows * (bucket + new) * k > INT32_MAX:
                raise UserError(f"{what} = {rows:,} rows: x ({bucket} + {new} tokens: the largest prompt bucket + "
                                f"max_new_tokens) x model.num_experts_per_tok={k} is over 2^31-1 token copies (the "
                                "MoE dispatch indexes them in int32); lower the rows or the token budget")
        micro = self.update.micro_batches
        for stage in self.stages:  # an SFT forward: a micro-batch's rows x its longest bucket
            if stage.kind not in ("sft", "distill"):
                continue
            model = student_model(self.model, stage.student_overrides, f"stages[{stage.name}]") \
                if stage.student_overrides else self.model
            rows, length, k = -(-stage.batch_size // micro), stage.max_sequence_length, model.num_experts_per_tok
            if rows * length * k > INT32_MAX:
                raise UserError(f"stages[{stage.name}].batch_size={stage.batch_size} rows (/ update.micro_batches="
                                f"{micro}) x max_sequence_length={length} tokens x model.num_experts_per_tok={k} "
                                "is over 2^31-1 token copies (the MoE dispatch indexes them in int32): lower "
                                f"stages[{stage.name}].batch_size or max_sequence_length (the longest row's tokens), "
                                "or raise update.micro_batches")


def _check_stage_data(stages: Sequence[StageConfig], index: int, field: str) -> None:
    """A stage's data named by stage name must come from an earlier rejection_sampling stage."""
    stage = stages[index]
    value = getattr(stage, field)
    by_name = {s.name: (i, s) for i, s in enumerate(stages)}
    if value is None or value not in by_name:
        return
    source_index, source = by_name[value]
    if source.kind != "rejection_sampling" or source_index >= index:
        raise UserError(f"stages[{stage.name}].{field}={value!r}: a stage named as data must be an earlier "
                        f"rejection_sampling stage (it is {source.kind!r} at position {source_index + 1})")


def student_model(model: ModelConfig, overrides: Sequence[str], where: str = "student_overrides") -> ModelConfig:
    """`model` with a distill stage's overrides ("hidden_size=64", "num_hidden_layers=1") applied."""
    where = f"{where}.student_overrides"
    try:
        return build_structured(OmegaConf.structured(model), [parse_overrides(overrides, where, "key=value")], where)
    except UserError as err:  # the model's own checks name "model.family=..." only: say whose model it is
        if str(err).startswith(where):
            raise
        raise UserError(f"{where}: {err}") from None


def stage_config(config: Config, index: int) -> Config:
    """The config in effect at stage `index`: from a distill stage on, the model is its student."""
    model = config.model
    for stage in config.stages[:index + 1]:
        if stage.kind == "distill":
            model = student_model(config.model, stage.student_overrides, where=f"stages[{stage.name}]")
    return config if model == config.model else dataclasses.replace(config, model=model)


def preset_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_path(name_or_path: str | pathlib.Path) -> pathlib.Path:
    path = pathlib.Path(name_or_path)
    if path.suffix.lower() in (".yaml", ".yml"):  # (run.YAML was "not a YAML file and not one of the presets")
        if not path.is_file():
            raise UserError(f"config file {str(path)!r} " + ("is not a file" if path.exists() else "does not exist"))
        return path
    preset = CONFIG_DIR / f"{name_or_path}.yaml"
    if not preset.is_file():
        hint = (f"; {str(path)!r} is a Hugging Face checkpoint: give a config with stages.0.init_from={path} (or "
                "convert it with `r1jax import-hf`)" if (path / "config.json").is_file() else
                f"; {str(path)!r} is a directory (a run directory keeps its config as config.yaml)" if path.is_dir()
                else f"; {str(path)!r} is a file, but a config file's name ends in .yaml or .yml: rename it"
                if path.is_file() else "")
        raise UserError(f"unknown config {str(name_or_path)!r}: not a YAML file and not one of the presets "
                        f"({', '.join(preset_names())}){hint}")
    return preset


def load_config(name_or_path: str | pathlib.Path = "tiny", overrides: Sequence[str] = ()) -> Config:
    path = resolve_path(name_or_path)
    try:
        top = pyyaml.safe_load(path.read_text(encoding="utf-8"))  # its type: OmegaConf read "hello" as {hello: null}
    except pyyaml.MarkedYAMLError as err:  # a syntax error: one line, at the file's line and column
        mark = err.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise UserError(f"config file {where}: cannot parse YAML: {err.problem or err.context}") from None
    except Exception as err:  # other YAML errors; name the file
        raise UserError(f"config file {path}: cannot parse YAML: {' '.join(str(err).split())}") from err
    if not isinstance(top, (dict, type(None))):  # an empty file: every default
        raise UserError(f"config file {path}: the top level must be a mapping of sections (model:, grpo:, "
                        f"stages:, ...), not a {type(top).__name__}")
    try:
        yaml = OmegaConf.load(path)
    except Exception as err:  # what OmegaConf refuses of valid YAML (a duplicate key), on one line
        raise UserError(f"config file {path}: cannot parse YAML: {' '.join(str(err).split())}") from err
    parsed = parse_overrides(overrides)
    config = config_from_dicts(yaml, parsed, source=str(path))
    return with_hf_architecture(config, model_fields_given(yaml, parsed, str(path)))


def with_hf_architecture(config: Config, given: dict[str, str] | None) -> Config:
    """`config` with the architecture of the Hugging Face directory its stages start from, if any
    (rl.hf_architecture; `given`: the model fields the user set -> where)."""
    model = run_model(config.model, config.stages, given)
    return config if model == config.model else dataclasses.replace(config, model=model)


def model_fields_given(yaml: Any, overrides: Overrides, source: str) -> dict[str, str]:
    """{model field: where it was set} for the fields the YAML's `model` section and the overrides name."""
    section = yaml.get("model") if OmegaConf.is_dict(yaml) else None
    given = {str(key): source for key in section.keys()} if OmegaConf.is_dict(section) else {}
    for text, parts, value in overrides.items:
        if parts[0] != "model":
            continue
        keys = parts[1:2] if len(parts) > 1 else list(value) if isinstance(value, dict) else []
        given.update({str(key): f"override {text!r}" for key in keys})
    return given


def config_from_dicts(*parts: Any, source: str = "config") -> Config:
    """Merge dicts / OmegaConf nodes over the schema, apply `Overrides` parts, build the validated Config."""
    return build_structured(OmegaConf.structured(Config), parts, source)


def stored_config(stored: Any, source: str) -> Config:
    """A checkpoint's stored config (a plain dict) as a Config. What an earlier version stored and the config now
    refuses, though it changed nothing, is dropped with a warning naming `source`, so that the checkpoint still
    resumes, evaluates and exports (an override could not remove it: overrides merge): `tokenizer.template_vars`
    beside a template that reads none (ignored before 2026-12-06)."""
    tokenizer = stored.get("tokenizer") if isinstance(stored, dict) else None
    if isinstance(tokenizer, dict) and tokenizer.get("template_vars") and tokenizer.get("template") != "chat":
        logging.getLogger(__name__).warning(
            "%s: tokenizer.template_vars %s are dropped: tokenizer.template %r reads none (they were ignored)",
            source, list(tokenizer["template_vars"]), tokenizer.get("template"))
        stored = {**stored, "tokenizer": {**tokenizer, "template_vars": {}}}
    return config_from_dicts(stored, source=source)


def to_dict(config: Config) -> dict:
    """The resolved config as plain data (for config.yaml in run directories and checkpoints): what
    `OmegaConf.to_container(OmegaConf.structured(config))` gives (tuples stay tuples), without rebuilding
    and validating the structured config again (0.15 s a call on a 2-core host, three calls a run)."""
    return dataclasses.asdict(config)


def to_yaml(config: Config) -> str:
    return OmegaConf.to_yaml(to_dict(config))
