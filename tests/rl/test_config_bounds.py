"""Config values that crashed a run (a traceback, often after a whole stage had trained), wrote outside the run
directory, or were silently read as something else: each is a UserError naming its key when the config loads."""

import re

import pytest

from r1jax.errors import UserError
from r1jax.rl.config import load_config
from r1jax.rl.rewards.config import CodeConfig, FieldError, PoolConfig, RewardsConfig


@pytest.mark.parametrize("override,named", [
    # int32 on the device: tracebacks in the sampler or the MoE dispatch, in train after the SFT stage
    ("sampling.top_k=99999999999", "sampling.top_k=99999999999"),
    ("eval.top_k=99999999999", "eval.top_k=99999999999"),
    ("sampling.top_k=513", "sampling.top_k=513: must be at most model.vocab_size=512"),
    ("eval.top_k=513", "eval.top_k=513: must be at most model.vocab_size=512"),
    ("sampling.max_new_tokens=99999999999", "sampling.max_new_tokens=99999999999"),
    ("stages.1.max_new_tokens=99999999999", "stages[grpo].max_new_tokens=99999999999"),
    ("grpo.group_size=99999999999", "grpo.group_size = 99999999999"),
    (("grpo.group_size=65536", "sampling.max_new_tokens=1000"),
     "grpo.prompts_per_step x grpo.group_size = 1,048,576 rows"),
    ("eval.samples=99999999999", "eval.samples=99999999999: must be at most 1,024"),
    ("eval.num_problems=99999999999", "eval.num_problems=99999999999"),
    # seeds where they are used (JAX keys: int64; grain's shuffle: 0..2^32-1)
    ("seed=9223372036854775808", "seed=9223372036854775808"),
    ("data.seed=-5", "data.seed = -5"),
    (f"data.seed={2**70}", f"data.seed = {2**70}"),
    # the reward pool: import, waits (threading.TIMEOUT_MAX) and setrlimit
    ("reward_pool.import_modules=['']", "reward_pool.import_modules"),
    ("reward_pool.import_modules=[.relative]", "reward_pool.import_modules"),
    ("reward_pool.timeout_s=1e300", "reward_pool.timeout_s = 1e+300"),
    ("reward_pool.timeout_s=1e9", "reward_pool.timeout_s = 1000000000.0"),
    ("reward_pool.timeout_s=1e-300", "reward_pool.timeout_s = 1e-300"),
    ("reward_pool.batch_deadline_s=1e300", "reward_pool.batch_deadline_s"),
    ("reward_pool.memory_mb=99999999999999999", "reward_pool.memory_mb = 99999999999999999"),
    ("rewards.code.memory_mb=99999999999999999", "rewards.code.memory_mb = 99999999999999999"),
    ("rewards.code.wall_s=1e300", "rewards.code.wall_s"),
    ("rewards.code.file_mb=99999999999999999", "rewards.code.file_mb"),
    ("reward_pool.workers=100000", "reward_pool.workers = 100000"),
    # past 2^31-1 a worker was never recycled, as with 0 (-1 was refused already)
    ("reward_pool.max_tasks_per_worker=99999999999", "reward_pool.max_tasks_per_worker = 99999999999"),
    ("reward_pool.max_tasks_per_worker=-1", "reward_pool.max_tasks_per_worker = -1"),
    # an SFT forward's token copies past int32 (the MoE dispatch's indices), whatever the data file holds
    ("stages.0.batch_size=1000000", "stages[sft].batch_size=1000000 rows (/ update.micro_batches=1) x "
                                    "max_sequence_length=4096 tokens x model.num_experts_per_tok=2"),
    (("stages.0.batch_size=4096", "stages.0.max_sequence_length=1048576"), "stages[sft].batch_size=4096 rows"),
    # a stage's name names files in the run directory
    ("stages.0.name=a/b", "name='a/b'"),
    ("stages.1.name=../../escape", "name='../../escape'"),
    ("stages.0.name=''", "name=''"),
    ("stages.0.name=.", "name='.'"),
    ("stages.0.name=..", "name='..'"),
    ("stages.0.name=' '", "name=' '"),
    # model sizes past any real model (tracebacks inside XLA, or minutes before any check)
    ("model.hidden_size=99999999999999999999", "model.hidden_size=99999999999999999999"),
    ("model.vocab_size=9223372036854775807", "model.vocab_size=9223372036854775807"),
    ("model.num_hidden_layers=100000000", "model.num_hidden_layers=100000000"),
    ("model.n_routed_experts=1000000", "model.n_routed_experts=1000000"),
    ("data.num_problems=99999999999999", "data.num_problems = 99999999999999"),
    # silently accepted nonsense
    ("data.path=''", "data.path='': expected a data file's path"),  # was "data file '.' is not a file"
    ("tokenizer.path=' '", "tokenizer.path=' ': expected a tokenizer directory"),  # was "directory '.'"
    ("eval.difficulty=0", "eval.difficulty=0"),
    ("eval.difficulty=-1", "eval.difficulty=-1"),
    ("eval.difficulty=6", "eval.difficulty=6"),
    ("model.rope_theta=0", "model.rope_theta=0"),
    ("model.rope_theta=-1", "model.rope_theta=-1"),
    ("model.rms_norm_eps=0", "model.rms_norm_eps=0"),
    ("model.rms_norm_eps=-1", "model.rms_norm_eps=-1"),
    ("model.initializer_range=0", "model.initializer_range=0"),
    ("model.routed_scaling_factor=0", "model.routed_scaling_factor=0"),
    ("model.routed_scaling_factor=-1", "model.routed_scaling_factor=-1"),
    ("model.routing_bias_update_rate=-1", "model.routing_bias_update_rate=-1"),
    ("sampling.rules={batch: [nope]}", "sampling.rules.batch: unknown mesh axes ['nope']"),
    ("sampling.rules={nope: [data]}", "sampling.rules.nope: unknown logical axis"),
    ("sharding.rules={nope: [data]}", "sharding.rules.nope: unknown logical axis"),
    ("sharding.rules={batch: [data, data]}", "sharding.rules.batch"),
    ("rewards.weights=[1e308,1e308]", "rewards.weights"),
    ("grpo.kl_coef=1e308", "grpo.kl_coef = 1e+308"),
    ("grpo.adv_eps=1e300", "grpo.adv_eps = 1e+300"),
    ("grpo.clip_high=1e30", "grpo.clip_high = 1e+30"),
    ("grpo.max_logratio=1e300", "grpo.max_logratio"),
    ("grpo.temperature=1e-300", "grpo.temperature = 1e-300"),
    ("sampling.temperature=1e300", "sampling.temperature=1e+300"),
    ("sampling.temperature=1e-300", "sampling.temperature=1e-300"),
    ("eval.temperature=1e300", "eval.temperature=1e+300"),
    ("stages.1.temperature=1e300", "stages[grpo].temperature=1e+300"),
    ("update.aux_loss_coef=1e308", "update.aux_loss_coef"),
    ("optimizer.total_steps=-5", "optimizer.total_steps = -5"),
    # the schedule counts updates in int32: an OverflowError in the learning-rate schedule before
    ("optimizer.total_steps=99999999999999", "optimizer.total_steps = 99999999999999"),
    ("optimizer.warmup_steps=99999999999", "optimizer.warmup_steps = 99999999999: expected in [0, 2^31-1]"),
    ("stages.0.steps=99999999999999999999", "stages[sft].steps=99999999999999999999: must be in [0, 2^31-1]"),
    ("optimizer.total_steps=0", "optimizer.total_steps = 0"),
    ("plots=2", "plots = 2: expected true or false"),
    ("checkpoint.async_save=2", "checkpoint.async_save = 2: expected true or false"),
    ("plots=yes_please", "plots = 'yes_please'"),
    # messages that named no key
    ("rewards.weights=[a,b]", "rewards.weights.0 = 'a': expected a number"),
    ("model.mlp_only_layers=[a]", "model.mlp_only_layers.0 = 'a': expected an integer"),
    ("rewards.names=[[a]]", "rewards.names.0 = ['a']: expected a string"),
    ("data.tasks=[[algebra]]", "data.tasks.0"),
    ("stages.0.filters=[[format]]", "stages.0.filters.0"),
    # one value where a list or a group goes: OmegaConf's "str is not a TupleConfig, ListConfig, list, or tuple"
    ("data.tasks=algebra", "data.tasks = 'algebra': expected a list, e.g. [algebra]"),
    ("rewards.names=accuracy", "rewards.names = 'accuracy': expected a list, e.g. [accuracy]"),
    ("sharding.rules={embed: fsdp}", "sharding.rules.embed = 'fsdp': expected a list, e.g. [fsdp]"),
    ("stages.0=5", "stages.0 = 5: expected a mapping of StageConfig's fields"),
    ("stages=grpo", "stages = 'grpo': expected a list of mappings of StageConfig's fields, e.g. [{name: ..., "
     "kind: ...}]"),  # was "e.g. [grpo]", which then read "stages.0 = 'grpo': expected a mapping"
    ("data.task_knobs=x", "data.task_knobs = 'x': expected a mapping"),
])
def test_a_bad_value_is_a_user_error_naming_its_key(override, named):
    with pytest.raises(UserError, match=re.escape(named)) as info:
        load_config("tiny", [override] if isinstance(override, str) else list(override))
    assert "$VALUE" not in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("body,named", [
    ("rewards: {names: [accuracy, format], weights: [a, b]}\n", "rewards.weights.0 = 'a': expected a number"),
    ("model: {mlp_only_layers: [a]}\n", "model.mlp_only_layers.0 = 'a': expected an integer"),
    ("rewards: {names: [[a]]}\n", "rewards.names.0 = ['a']: expected a string"),
    ("plots: 2\n", "plots = 2: expected true or false"),
    ("checkpoint: {async_save: 2}\n", "checkpoint.async_save = 2: expected true or false"),
    ("stages:\n  - {name: a/b, kind: sft}\n", "name='a/b'"),
    ("data: {tasks: algebra}\n", "data.tasks = 'algebra': expected a list, e.g. [algebra]"),
    ("model: 3\n", "model = 3: expected a mapping of ModelConfig's fields"),  # "Merge error: int is not ..."
])
def test_a_bad_value_in_a_yaml_file_names_the_file_and_key(tmp_path, body, named):
    path = tmp_path / "c.yaml"
    path.write_text(body)
    with pytest.raises(UserError, match=re.escape(named)) as info:
        load_config(path)
    assert "$VALUE" not in str(info.value)
    if "name=" not in named:
        assert "c.yaml" in str(info.value)


@pytest.mark.parametrize("overrides", [
    ["eval.difficulty=null", "eval.difficulty=5", "eval.top_k=512", "sampling.top_k=512"],
    ["seed=-1", "seed=9007199254740992", "data.seed=0", "data.seed=4294967295"],
    ["stages.0.name=cold-start_v1.2", "plots=false", "checkpoint.async_save=false"],
    ["sampling.temperature=0", "eval.temperature=0", "grpo.kl_coef=0", "model.routing_bias_update_rate=0"],
    ["reward_pool.import_modules=[tests.rl.reward_digit]", "reward_pool.memory_mb=0", "optimizer.total_steps=1",
     "optimizer.schedule=warmup_cosine"],
    ["sampling.rules={vocab: []}", "sharding.rules={embed: [fsdp, data]}", "rewards.weights=['1.5', -2]"],
    # 2^31-1 tasks; 1024 rows x 2^19 tokens x 2 experts per token = 2^30 copies, and 2^31 split in two
    ["reward_pool.max_tasks_per_worker=2147483647", "stages.0.batch_size=1024", "stages.0.max_sequence_length=524288"],
    ["stages.0.batch_size=2048", "stages.0.max_sequence_length=524288", "update.micro_batches=2"],
])
def test_values_at_the_bounds_still_load(overrides):
    load_config("tiny", overrides)


@pytest.mark.parametrize("make,named", [
    (lambda: PoolConfig(timeout_s=1e300), "reward_pool.timeout_s = 1e+300"),
    (lambda: PoolConfig(memory_mb=99999999999999999), "reward_pool.memory_mb = 99999999999999999"),
    (lambda: PoolConfig(import_modules=("",)), "reward_pool.import_modules"),
    (lambda: CodeConfig(memory_mb=99999999999999999), "rewards.code.memory_mb = 99999999999999999"),
])
def test_pool_and_code_bounds_are_field_errors(make, named):
    """FieldError: `r1jax score` says them again naming its flags (--timeout, --memory-mb)."""
    with pytest.raises(FieldError, match=re.escape(named)):
        make()
    assert PoolConfig(timeout_s=1e6, batch_deadline_s=256 * 1e6 + 60).timeout_s == 1e6  # score's derived deadline


def test_one_sample_per_prompt_and_the_temperature_bounds_are_accepted():
    from r1jax.rl.config_checks import MAX_TEMPERATURE, MIN_TEMPERATURE, check_temperature
    from r1jax.rl.train.config import StageConfig

    assert StageConfig(name="rs", kind="rejection_sampling", samples_per_prompt=1).samples_per_prompt == 1
    with pytest.raises(UserError, match="samples_per_prompt=0"):
        StageConfig(name="rs", kind="rejection_sampling", samples_per_prompt=0)
    for value in (0, MIN_TEMPERATURE, 1.0, MAX_TEMPERATURE):
        check_temperature("t", value)
    for value in (MIN_TEMPERATURE * 0.9, MAX_TEMPERATURE * 1.01, -1.0):
        with pytest.raises(UserError, match="t="):
            check_temperature("t", value)
    with pytest.raises(UserError):
        check_temperature("t", 0, greedy=False)


@pytest.mark.parametrize("overrides,named", [
    (["sampling.top_p=0"], "sampling.top_p=0.0: must be in (0, 1]"),
    (["eval.top_p=0"], "eval.top_p=0.0: must be in (0, 1]"),
    # a bool is no number: OmegaConf read `true` in an int or float list as 1
    (["model.mlp_only_layers=[true]"], "model.mlp_only_layers.0 = True: expected an integer"),
    (["rewards.weights=[true,1]"], "rewards.weights.0 = True: expected a number"),
    # the items of an optional mapping's lists, set whole or by their key
    (["sampling.rules={batch: [[data]]}"], "sampling.rules.batch.0 = ['data']: expected a string"),
    (["sampling.rules={batch: [data]}", "sampling.rules.batch=[[data]]"],
     "sampling.rules.batch.0 = ['data']: expected a string"),
])
def test_bad_items_and_sampling_bounds_are_named(overrides, named):
    with pytest.raises(UserError, match=re.escape(named)):
        load_config("tiny", overrides)


def test_an_interpolation_is_left_to_omegaconf_to_resolve():
    assert load_config("tiny", ["checkpoint.async_save=false", "plots=${checkpoint.async_save}"]).plots is False


def test_the_shared_checks_refuse_past_their_bounds_when_called_directly():
    """The sampler's and the eval section's own checks (a config built in code skips the YAML checks)."""
    from r1jax.rl.config_checks import INT32_MAX, check_bool, check_sampling

    check_sampling("s", 1.0, 1.0, INT32_MAX)
    check_sampling("s", 0.0, 1e-9, 0)
    for temperature, top_p, top_k, named in [(1.0, 1.0, INT32_MAX + 1, "s.top_k=2147483648"),
                                             (1.0, 1.0, -1, "s.top_k=-1"), (1.0, 0.0, 0, "s.top_p=0.0"),
                                             (1.0, 1.5, 0, "s.top_p=1.5"), (-1.0, 1.0, 0, "s.temperature=-1.0")]:
        with pytest.raises(UserError, match=re.escape(named)):
            check_sampling("s", temperature, top_p, top_k)
    check_bool("k", True)
    check_bool("k", False)
    for value in (1, 0, "true", None):
        with pytest.raises(UserError, match=re.escape(f"k={value!r}: expected true or false")):
            check_bool("k", value)


# --- mutation round 21: the config's cross-section checks, at their bounds (hand-computed) ---

# tiny: model.num_experts_per_tok=2, sampling.prompt_buckets=(32, 64), sampling.max_new_tokens=40; an SFT stage
# of max_sequence_length=4096. INT32_MAX = 2,147,483,647.
@pytest.mark.parametrize("overrides,named", [
    # eval.batch_size x samples = 10,083 x 1,024 = 10,324,992 rows x (64 + 40) x 2 = 2,147,598,336 > 2^31-1
    (["eval.samples=1024", "eval.batch_size=10083"], "eval.batch_size x eval.samples = 10,324,992 rows: x (64 + 40 "
                                                     "tokens: the largest prompt bucket"),
    # ceil(786,430 / 3) = 262,144 rows x 4096 x 2 = 2^31 (the floor, 262,143, would fit)
    (["stages.0.batch_size=786430", "update.micro_batches=3"], "stages[sft].batch_size=786430 rows (/ "
                                                               "update.micro_batches=3) x max_sequence_length=4096"),
    # a distill forward is checked as an SFT one: 262,144 x 4096 x 2 = 2^31
    (["stages=[{name: d, kind: distill, teacher: /nonexistent, batch_size: 262144}]"], "stages[d].batch_size=262144"),
    (["stages=[]"], "stages: empty; a run needs at least one stage"),
    (["stages.1.name=sft"], "stages: names must be unique, got ['sft', 'sft']"),
])
def test_a_cross_section_bound_names_its_keys_at_the_first_value_past_it(overrides, named):
    with pytest.raises(UserError, match=re.escape(named)):
        load_config("tiny", overrides)


@pytest.mark.parametrize("overrides", [
    ["eval.samples=1024", "eval.batch_size=10082"],  # 10,323,968 x 104 x 2 = 2,147,385,344 <= 2^31-1
    ["stages.0.batch_size=786429", "update.micro_batches=3"],  # 262,143 x 4096 x 2 = 2,147,475,456
    ["stages=[{name: d, kind: distill, teacher: /nonexistent, batch_size: 262143}]"],
    # an overlong reward of weight 0 never scores, so its unreachable start is no error
    ["rewards.names=[accuracy,format,overlong]", "rewards.weights=[1.0,1.0,0.0]"],
])
def test_the_last_value_within_a_cross_section_bound_loads(overrides):
    load_config("tiny", overrides)


def test_an_unreachable_overlong_penalty_is_named_for_a_rejection_sampling_stage_too():
    with pytest.raises(UserError, match=re.escape("but stage rs samples at most 40")):
        load_config("tiny", ["rewards.names=[accuracy,format,overlong]", "rewards.weights=[1.0,1.0,1.0]",
                             "stages=[{name: rs, kind: rejection_sampling}]"])


def test_a_mapping_item_of_the_wrong_kind_and_a_nan_in_a_yaml_file_are_named(tmp_path):
    """A dict field's values are items: `sampling.mesh={expert: true}` is no mesh size of 1; a file's NaN is caught
    after its merge as an override's is after its update."""
    with pytest.raises(UserError, match=re.escape("sampling.mesh.expert = True: expected an integer")):
        load_config("tiny", ["sampling.mesh={expert: true}"])
    (tmp_path / "c.yaml").write_text("sampling: {temperature: .nan}\n")
    with pytest.raises(UserError, match=re.escape("c.yaml: sampling.temperature = nan: expected a finite number")):
        load_config(tmp_path / "c.yaml")


def test_answer_max_chars_reaches_the_math_verifiers_cap_and_no_further():
    # the cap itself is a valid setting (1000: rl.tasks.math_answer.MAX_ANSWER_CHARS, by hand); one past it is not
    assert RewardsConfig(answer_max_chars=1000).answer_max_chars == 1000
    with pytest.raises(FieldError, match=r"^rewards\.answer_max_chars = 1001: expected in \[1, 1000\]"):
        RewardsConfig(answer_max_chars=1001)
