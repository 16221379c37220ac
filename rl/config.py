"""The run config: typed, frozen dataclasses per subsystem, loaded from YAML with dotted overrides.

`load_config("tiny", ["model.num_hidden_layers=4"])` reads `configs/tiny.yaml` (or any YAML path), merges
it over the schema, then the overrides, through OmegaConf structured configs: an unknown key or a value of
the wrong type is a UserError naming the full key; each dataclass validates its values on construction.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Sequence

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from r1jax.model.config import ModelConfig
from r1jax.errors import UserError
from r1jax.model.tokenizer import TokenizerConfig
from r1jax.rl.data.config import DataConfig
from r1jax.rl.grpo.config import GRPOConfig, OptimizerConfig
from r1jax.rl.rewards.config import PoolConfig, RewardsConfig
from r1jax.rl.sampler import SamplingConfig
from r1jax.rl.train.config import CheckpointConfig, EvalConfig, StageConfig
from r1jax.rl.update import UpdateConfig
from r1jax.sharding.mesh import ShardingConfig

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"


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

    def __post_init__(self) -> None:
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise UserError(f"stages: names must be unique, got {names}")
        for index, stage in enumerate(self.stages):
            _check_stage_data(self.stages, index, "teacher" if stage.kind == "distill" else "data_path")
            if stage.student_overrides:
                student_model(self.model, stage.student_overrides, where=f"stages[{stage.name}]")


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
        merged = OmegaConf.merge(OmegaConf.structured(model), parse_overrides(overrides, where, "key=value"))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise UserError(f"{where}: {_describe(err)}") from err


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
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise UserError(f"config file {str(path)!r} does not exist")
        return path
    preset = CONFIG_DIR / f"{name_or_path}.yaml"
    if not preset.is_file():
        raise UserError(f"unknown config {str(name_or_path)!r}: not a YAML file and not one of the presets "
                        f"({', '.join(preset_names())})")
    return preset


def load_config(name_or_path: str | pathlib.Path = "tiny", overrides: Sequence[str] = ()) -> Config:
    path = resolve_path(name_or_path)
    try:
        yaml = OmegaConf.load(path)
    except Exception as err:  # a YAML syntax error; name the file
        raise UserError(f"config file {path}: cannot parse YAML: {err}") from err
    return config_from_dicts(yaml, parse_overrides(overrides), source=str(path))


def config_from_dicts(*parts: Any, source: str = "config") -> Config:
    """Merge dicts / OmegaConf nodes over the schema and build the validated Config."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), *parts)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise UserError(f"{source}: {_describe(err)}") from err


def parse_overrides(overrides: Sequence[str], where: str = "overrides", form: str = "dotted.key=value"):
    """"key=value" strings as an OmegaConf node; a malformed one is a UserError naming `where`."""
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise UserError(f"{where}: {bad[0]!r} is not of the form {form}")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as err:
        raise UserError(f"{where}: {_describe(err)}") from err


def _describe(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    message = str(err).splitlines()[0]
    return f"key {key!r}: {message}" if key else message


def to_dict(config: Config) -> dict:
    """The resolved config as plain data (for config.yaml in run directories and checkpoints)."""
    return OmegaConf.to_container(OmegaConf.structured(config))


def to_yaml(config: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))
