"""Every shipped YAML parses and validates; bad keys and values fail naming them."""

import re

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


def test_list_items_are_overridden_by_index():
    base = load_config("tiny")
    config = load_config("tiny", ["stages.0.steps=5", "stages.1.lr=1e-5", "stages.0.filters=[format]"])
    assert [s.steps for s in config.stages] == [5, base.stages[1].steps]
    assert config.stages[1].lr == 1e-5 and config.stages[0].filters == ("format",)
    assert config.stages[0].name == base.stages[0].name and config.model == base.model
    config = load_config("tiny", ["stages.1={steps: 7, batch_size: 4}"])  # a dict merges into the item
    assert (config.stages[1].steps, config.stages[1].batch_size, config.stages[1].kind) == (7, 4, "grpo")
    later_wins = load_config("tiny", ["stages.0.steps=5", "stages.0.steps=6"])
    assert later_wins.stages[0].steps == 6


def test_list_fields_take_a_whole_list():
    config = load_config("tiny", ["rewards.names=[format,accuracy]", "rewards.weights=[0.5,2]",
                                  "sampling.prompt_buckets=[16,32]"])
    assert config.rewards.names == ("format", "accuracy") and config.rewards.weights == (0.5, 2.0)
    assert config.sampling.prompt_buckets == (16, 32)
    config = load_config("tiny", ["rewards.names.0=language", "sampling.prompt_buckets.1=128"])
    assert config.rewards.names == ("language", "format") and config.sampling.prompt_buckets == (32, 128)
    config = load_config("tiny", ["stages=[{name: only, kind: sft, steps: 2}]"])
    assert [(s.name, s.kind, s.steps) for s in config.stages] == [("only", "sft", 2)]


@pytest.mark.parametrize("override,message", [
    ("stages.5.steps=1", "stages has 2 items"),
    ("stages.0.bogus=1", "bogus"),
    ("stages.0.steps=abc", "stages[0].steps"),
    ("stages.1.steps=-1", "stages[grpo].steps=-1"),  # a dataclass check: names the stage's field
    ("stages.x.steps=1", "stages is a list"),
    ("stages[0].steps=5", "not of the form"),
    ("stages.-1.steps=5", "not of the form"),
    ("=5", "not of the form"),
    ("a..b=1", "not of the form"),
    ("model.=1", "not of the form"),
    ("0.steps=1", "not of the form"),
    ("stages.0.steps", "not of the form"),
    ("seed.x=1", "seed is a single value"),
    ("stages.0.steps.x=1", "single value"),
    ("rewards.names=accuracy", "rewards.names"),
    ("rewards.names.2=format", "rewards.names has 2 items"),
])
def test_a_bad_list_or_malformed_override_names_the_override(override, message):
    with pytest.raises(UserError, match=re.escape(message)) as info:
        load_config("tiny", [override])
    assert "\n" not in str(info.value)
    if not message.startswith("stages["):
        assert repr(override) in str(info.value)


def test_grpo_and_optimizer_defaults_are_r1_zeros():
    """DeepSeek-R1's supplementary "Training details of DeepSeek-R1-Zero": lr 3e-6, beta 0.001, G 16, 32
    questions a step, T 1.0, the reference reset every 400 steps, epsilon 0.2; one update per batch (mu 1), k3 KL,
    group-normalised advantages, on-policy. A config leaving a field out trains at these."""
    from r1jax.rl.grpo.config import GRPOConfig, OptimizerConfig

    g, o = GRPOConfig(), OptimizerConfig()
    assert (g.group_size, g.prompts_per_step, g.temperature, g.kl_coef, g.ref_reset_every, g.clip_low,
            g.num_iterations, g.kl_estimator, g.advantage_estimator, g.max_staleness) == (
        16, 32, 1.0, 0.001, 400, 0.2, 1, "k3", "grpo", 0)
    assert (o.lr, o.schedule, o.b1, o.b2, o.weight_decay, o.grad_clip_norm) == (3e-6, "constant", 0.9, 0.95, 0.1, 1.0)
    assert GRPOConfig(ref_reset_every=0).ref_reset_every == 0  # never reset
    with pytest.raises(UserError, match="ref_reset_every"):
        GRPOConfig(ref_reset_every=-1)


def test_the_reference_resets_after_each_nth_step_of_the_stage_and_never_for_0():
    from r1jax.rl.update import reference_due

    assert [s for s in range(1200) if reference_due(s, 400)] == [399, 799, 1199]  # after steps 400, 800, 1200
    assert [s for s in range(5) if reference_due(s, 1)] == [0, 1, 2, 3, 4]
    assert not any(reference_due(s, 0) for s in range(1000))  # 0: never (it divided by 0 without the guard)


def test_a_reference_reset_copies_the_current_params_and_routing_bias():
    import jax.numpy as jnp
    from r1jax.rl.update import TrainState, reset_reference

    state = TrainState({"w": jnp.array([1.0, 2.0])}, {"b": jnp.array([3.0])}, None, jnp.int32(5),
                       ({"w": jnp.zeros(2)}, {"b": jnp.zeros(1)}))
    reset = reset_reference(state)
    assert reset.ref[0]["w"].tolist() == [1.0, 2.0] and reset.ref[1]["b"].tolist() == [3.0]
    assert reset.params["w"].tolist() == [1.0, 2.0] and int(reset.step) == 5
    # a copy, not the policy's own buffers: the next update donates those
    assert reset.ref[0]["w"] is not reset.params["w"] and reset.ref[1]["b"] is not reset.bias["b"]


def test_micro_batch_i_holds_rows_i_i_plus_m_and_so_on():
    """Strided, not contiguous: with rows sharded contiguously over devices every micro-batch spans them all."""
    import numpy as np
    from r1jax.rl.update import micro_split

    split = micro_split({"x": np.arange(12).reshape(6, 2)}, 3)["x"]
    assert np.asarray(split)[:, :, 0].tolist() == [[0, 6], [2, 8], [4, 10]]
    with pytest.raises(UserError, match="micro_batches=4"):
        micro_split({"x": np.zeros((6, 2))}, 4)


def test_a_yml_file_loads_as_a_yaml_one(tmp_path):
    """`.yml` is as much a YAML file as `.yaml`: read as the config, not looked up as a preset name."""
    (tmp_path / "run.yml").write_text("seed: 3\nstages:\n  - {name: only, kind: sft, steps: 2}\n")
    config = load_config(tmp_path / "run.yml", ["stages.0.steps=5"])
    assert (config.seed, [(s.name, s.steps) for s in config.stages]) == (3, [("only", 5)])
    with pytest.raises(UserError, match=re.escape(f"config file {str(tmp_path / 'gone.yml')!r} does not exist")):
        load_config(tmp_path / "gone.yml")


def test_a_field_of_a_tuple_item_is_refused_not_written_over_the_item():
    """`rewards.names.0.x=format`: a string item has no field x; the override is refused, naming how the
    tuple is set, where replacing the whole tuple would have put 'format' in place of item 0."""
    with pytest.raises(UserError, match=re.escape("'rewards.names.0.x=format': rewards.names is set as a whole "
                                                  "list (rewards.names=[...]) or item by item")):
        load_config("tiny", ["rewards.names.0.x=format"])
    assert load_config("tiny", ["rewards.names.1=accuracy", "rewards.names.0=format"]).rewards.names == \
        ("format", "accuracy")
