"""Every shipped YAML parses and validates; bad keys and values fail naming them."""

import pytest

from r1jax.errors import UserError
from r1jax.rl.config import CONFIG_DIR, load_config, preset_names, to_dict, config_from_dicts


@pytest.mark.parametrize("name", preset_names())
def test_every_shipped_config_parses_and_validates(name):
    config = load_config(CONFIG_DIR / f"{name}.yaml")
    assert config.model.family in ("deepseek_v3", "qwen3_moe")
    assert config_from_dicts(to_dict(config)) == config  # the resolved form round-trips


def test_required_presets_exist():
    assert {"tiny", "bench", "deepseek_v3_671b", "qwen3_30b_a3b"} <= set(preset_names())


def test_overrides_apply_with_types():
    config = load_config("tiny", ["model.num_hidden_layers=4", "model.q_lora_rank=8", "sharding.tensor=2"])
    assert config.model.num_hidden_layers == 4 and config.model.q_lora_rank == 8
    assert config.sharding.tensor == 2
    config = load_config("tiny", ["eval.reflection_words=[hmm,wait]"])
    assert config.eval.reflection_words == ("hmm", "wait")


@pytest.mark.parametrize("override,named", [
    ("model.hiden_size=3", "model.hiden_size"),
    ("modle.hidden_size=3", "modle"),
    ("model.hidden_size=abc", "model.hidden_size"),
    ("model.family=llama", "model.family"),
    ("model.n_group=3", "model.n_group"),
    ("model.num_experts_per_tok=9", "model.num_experts_per_tok"),
    ("sharding.preset=nope", "sharding.preset"),
    ("model.compute_dtype=float16", "model.compute_dtype"),
    ("novalue", "novalue"),
    ("eval.reflection_words=[]", "eval.reflection_words"),
    ("eval.reflection_words=[wait,' ']", "eval.reflection_words"),
])
def test_bad_key_or_value_names_it(override, named):
    with pytest.raises(UserError, match=named.replace(".", r"\.")):
        load_config("tiny", [override])


def test_bad_yaml_file_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(UserError, match="bad.yaml"):
        load_config(bad)
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
