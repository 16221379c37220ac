"""Bad config values, config files and command-line flags fail naming the culprit: no traceback, and no value
accepted that a run would then ignore or misuse (found by a review: each case here was one of those)."""

import pytest

from r1jax.errors import UserError
from r1jax.rl.cli.main import build_parser, main, parse_arguments
from r1jax.rl.config import load_config

from tests.rl.conftest import TRAIN_CONFIG


def load_fails(*overrides, named, config=TRAIN_CONFIG):
    with pytest.raises(UserError) as info:
        load_config(config, list(overrides))
    message = str(info.value)
    for fragment in [named] if isinstance(named, str) else named:
        assert fragment in message, message
    assert "\n" not in message
    return message


@pytest.mark.parametrize("override, problem", [("grpo.group_size=[unclosed", "did not find expected ',' or ']'"),
                                               ("grpo.group_size={", "did not find expected node content")])
def test_an_override_that_is_not_yaml_is_named(override, problem):
    load_fails(override, named=[f"overrides: {override!r}: not valid YAML", problem])  # a ParserError before


@pytest.mark.parametrize("override, named", [
    ("data.fields={prompt:question}", "write 'prompt: question', not 'prompt:question'"),  # "... is not Optional"
    ("stages=[{name:a, kind: sft}]", "write 'name: a', not 'name:a'"),
    ("data.task_knobs={arithmetic: {digits:2}}", "write 'digits: 2', not 'digits:2'"),  # "unknown knob(s)"
    ("data.task_knobs={arithmetic:{digits: 2}}", "found unexpected ':'); YAML needs a space after the colon in a "
                                                 "mapping: write 'arithmetic: {...', not 'arithmetic:{...'"),
])
def test_a_mapping_override_without_a_space_after_its_colon_is_named(override, named):
    """YAML reads `{prompt:question}` as the key `prompt:question` with no value: the message named a key the
    user never wrote ("field 'data.fields.prompt:question' is not Optional")."""
    load_fails(override, named=[f"overrides: {override!r}: ", named])
    assert load_config(TRAIN_CONFIG, ["data.fields={prompt: 'a:b'}"]).data.fields == {"prompt": "a:b"}


@pytest.mark.parametrize("override, named", [
    ("sharding.rules=[]", "sharding.rules: expected a mapping, got a list"),  # "Cannot merge incompatible
    ("data.fields=[prompt]", "data.fields: expected a mapping, got a list"),  # container types"
    ("stages={name: x}", "stages: expected a list, got a mapping"),
    ("stages.0=[1]", "stages.0: expected a mapping of StageConfig's fields, got a list"),  # "key 'stages0'"
    ("data.tasks={a: 1}", "data.tasks: expected a list, got a mapping"),  # "dict is not a TupleConfig"
])
def test_an_override_giving_a_list_for_a_mapping_or_the_reverse_is_named(override, named):
    load_fails(override, named=f"overrides: {override!r}: {named}")


def test_an_unknown_key_in_a_config_files_list_item_is_named_with_its_place(tmp_path):
    """OmegaConf named a stage's misspelled key without the stage ("key 'stepz'"), as it does for an override."""
    config = tmp_path / "run.yaml"
    config.write_text("stages:\n  - {name: a, kind: sft, steps: 1}\n  - {name: g, kind: grpo, stepz: 3}\n")
    load_fails(config=config, named=f"{config}: key 'stages.1.stepz': not in StageConfig. Did you mean: 'steps'?")
    config.write_text("stages:\n  - {name: g, kind: grpo, zzz: 3}\n")
    assert load_fails(config=config, named="key 'stages.0.zzz': not in StageConfig").endswith("StageConfig")


def test_an_override_value_that_is_not_utf8_is_named(capsys):
    """A Latin-1 file name (`data.path=/data/caf\\xe9.jsonl`) arrives from argv as a surrogate escape: PyYAML's
    UnicodeEncodeError was a traceback for every command taking overrides."""
    load_fails("data.path=/tmp/caf\udce9.jsonl", named="overrides: 'data.path=/tmp/caf\\udce9.jsonl': the value of "
                                                       "data.path is not valid UTF-8 (byte 0xe9 at character 8)")
    assert main(["info", str(TRAIN_CONFIG), "data.path=/tmp/caf\udce9.jsonl"]) == 2
    err = capsys.readouterr().err
    assert "data.path is not valid UTF-8" in err and "Traceback" not in err


@pytest.mark.parametrize("text, named", [
    ("grpo:\n  group_size: [1\n", ":3:1: cannot parse YAML: expected ',' or ']', but got '<stream end>'"),
    ("grpo:\n\tgroup_size: 1\n", ":2:1: cannot parse YAML: found character '\\t' that cannot start any token"),
    ("seed: 1\nseed: 2\n", ": cannot parse YAML: while constructing a mapping"),  # OmegaConf's: one line too
])
def test_a_yaml_syntax_error_is_one_line_at_the_files_line_and_column(tmp_path, text, named):
    path = tmp_path / "bad.yaml"
    path.write_text(text)  # eight lines before, the file named "<unicode string>" in them
    load_fails(named=f"config file {path}{named}", config=path)  # load_fails: a message of one line


def test_a_config_file_of_the_wrong_shape_is_named(tmp_path):
    top = tmp_path / "list.yaml"
    top.write_text("- model\n- grpo\n")  # a TypeError "Cannot merge incompatible container types" before
    load_fails(named=[str(top), "the top level must be a mapping", "not a list"], config=top)
    for text, kind in (("hello\n", "str"), ('"a string"\n', "str"), ("5\n", "int")):  # OmegaConf read "hello"
        top.write_text(text)  # as {hello: null} ("Key 'hello' not in 'Config'") and 5 as an unknown object type
        load_fails(named=[str(top), "the top level must be a mapping", f"not a {kind}"], config=top)
    top.write_text("")  # an empty file: every default (as before)
    assert load_config(top).grpo == load_config(top, ["seed=1"]).grpo
    (tmp_path / "dir.yaml").mkdir()  # "does not exist" before
    load_fails(named=[f"config file {str(tmp_path / 'dir.yaml')!r} is not a file"], config=tmp_path / "dir.yaml")
    stages = tmp_path / "stages.yaml"
    stages.write_text("stages: {name: a}\n")
    load_fails(named=[str(stages), "stages: expected a list, got a mapping"], config=stages)


@pytest.mark.parametrize("override, key", [
    ("rewards.weights=[.nan,1]", "rewards.weights.0 = nan"),  # trained on NaN rewards, exit 0
    ("rewards.weights=[1,nan]", "rewards.weights.1 = nan"),
    ("rewards.weights.0=.inf", "rewards.weights.0 = inf"),
    ("sampling.temperature=.nan", "sampling.temperature = nan"),  # was greedy decoding
    ("eval.temperature=nan", "eval.temperature = nan"),
    ("grpo.temperature=.inf", "grpo.temperature = inf"),
    ("optimizer.lr=.inf", "optimizer.lr = inf"),
    ("stages.0.lr=nan", "stages.0.lr = nan"),
    ("stages.0.temperature=nan", "stages.0.temperature = nan"),
    ("stages.0.reward_threshold=-.inf", "stages.0.reward_threshold = -inf"),
    ("update.aux_loss_coef=.nan", "update.aux_loss_coef = nan"),  # any float field, in any section
    ("model.rope_theta=.inf", "model.rope_theta = inf"),
    ("reward_pool.timeout_s=.inf", "reward_pool.timeout_s = inf"),
    ("rewards={weights: [.nan, 1]}", "rewards.weights.0 = nan"),  # a whole section
])
def test_nan_and_infinity_are_refused_in_every_float_field(override, key):
    load_fails(override, named=[repr(override), key, "expected a finite number"])


def test_nan_in_a_config_file_is_named_with_the_file(tmp_path):
    path = tmp_path / "nan.yaml"
    path.write_text("rewards:\n  weights: [.nan, 1]\n")
    load_fails(named=[str(path), "rewards.weights.0 = nan", "finite"], config=path)
    stages = ("stages=[{name: rs, kind: rejection_sampling, steps: 1, batch_size: 8}, {name: student, kind: "
              "distill, steps: 1, batch_size: 8, teacher: rs, student_overrides: [rope_theta=.nan]}]")
    load_fails(stages, named=["stages[student].student_overrides", "rope_theta = nan", "finite"])


@pytest.mark.parametrize("override, named", [
    ("eval.every=-1", "eval.every=-1"),  # n % -1 == 0: an evaluation after every step
    ("eval.num_logged_samples=-1", "eval.num_logged_samples=-1"),  # logged nothing
    ("stages=[]", "stages: empty"),  # exit 0, nothing trained
    ("stages.0.max_new_tokens=-5", "stages[sft].max_new_tokens=-5"),  # named sampling.max_new_tokens, later
    ("stages.0.max_new_tokens=0", "stages[sft].max_new_tokens=0"),  # meant sampling.max_new_tokens silently
    # read by rejection sampling alone: a grpo stage's was accepted and ignored
    ("stages.1.temperature=0.6", "stages[grpo].temperature: only a rejection_sampling stage samples with its own; "
                                 "a grpo stage samples with grpo.temperature and sampling.max_new_tokens"),
    ("stages.1.max_new_tokens=16", "stages[grpo].max_new_tokens: only a rejection_sampling stage"),
    ("stages.0.max_new_tokens=16", "stages[sft].max_new_tokens: only a rejection_sampling stage samples with its "
                                   "own; a sft stage samples nothing"),
    # a grpo stage samples data.path's prompts, a distill stage its teacher's rows: a data_path was ignored
    ("stages.1.data_path=mine.jsonl", "stages[grpo].data_path: only sft and rejection_sampling stages read a file "
                                      "of their own; a grpo stage samples data.path's prompts"),
    ("stages.0.teacher=rs", "stages[sft].teacher: only a distill stage learns from a teacher"),
    ("sampling.layout=foo", "sampling.layout='foo'"),  # failed when the first sampler was built, after SFT
    ("sampling.mesh={foo: 2}", "sampling.mesh: unknown axes ['foo']"),  # the training layout, silently
    ("sampling.mesh={data: 0}", "sampling.mesh.data=0"),
    ("sampling.mesh={data: -1}", "fsdp and data are both -1"),
    ("sampling.prompt_buckets=[-5,64]", "sampling.prompt_buckets=[-5, 64]"),
])
def test_out_of_range_values_are_named_when_the_config_loads(override, named):
    load_fails(override, named=named)


def test_good_values_next_to_the_bad_ones_still_load():
    config = load_config(TRAIN_CONFIG, ["eval.every=0", "eval.num_logged_samples=0", "stages.0.steps=4",
                                        "sampling.layout=train", "sampling.mesh={data: 2, fsdp: 1, tensor: -1}"])
    assert config.stages[0].steps == 4 and config.sampling.mesh == {"data": 2, "fsdp": 1, "tensor": -1}


def usage_error(capsys, *argv):
    """argparse's usage error for `argv` (exit code 2, before anything loads): its message."""
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    return err


@pytest.mark.parametrize("argv, said", [
    (["eval", "CK", "--max-new-tokens", "-1"], "argument --max-new-tokens: expected an integer >= 1, got -1"),
    (["eval", "CK", "--max-new-tokens", "0"], "argument --max-new-tokens: expected an integer >= 1, got 0"),
    (["eval", "CK", "--difficulty", "0"], "argument --difficulty: expected an integer >= 1, got 0"),
    (["eval", "CK", "--workers", "0"], "argument --workers: expected an integer >= 1, got 0"),
    (["eval", "CK", "--samples", "0"], "argument --samples: expected an integer >= 1, got 0"),
    (["eval", "CK", "--temperature", "nan"], "argument --temperature: expected a finite number >= 0, got 'nan'"),
    (["eval", "CK", "--top-p", "1.5"], "argument --top-p: expected a finite number in (0, 1], got '1.5'"),
    (["eval", "CK", "--top-k", "-1"], "argument --top-k: expected an integer >= 0, got -1"),
    (["generate", "CK", "--ids", "1", "--temperature", "-1"], "argument --temperature: expected a finite number >= 0"),
    (["generate", "CK", "--ids", "1", "--temperature", "inf"], "argument --temperature: expected a finite number"),
    (["generate", "CK", "--ids", "1", "--top-p", "nan"], "argument --top-p: expected a finite number in (0, 1]"),
    (["generate", "CK", "--ids", "1", "--samples", "0"], "argument --samples: expected an integer >= 1"),
    (["score", "F.jsonl", "--timeout", "-1"], "argument --timeout: expected a finite number > 0, got '-1'"),
    (["score", "F.jsonl", "--timeout", "nan"], "argument --timeout: expected a finite number > 0, got 'nan'"),
    (["score", "F.jsonl", "--workers", "0"], "argument --workers: expected an integer >= 1, got 0"),
    (["score", "F.jsonl", "--max-length", "0"], "argument --max-length: expected an integer >= 1, got 0"),
])
def test_bad_flag_values_are_usage_errors_naming_the_flag(capsys, argv, said):
    assert said in usage_error(capsys, *argv)


@pytest.mark.parametrize("flags, said", [
    (["--memory-mb", "100"], "--memory-mb 100: expected 0 (no limit) or >= 256"),
    (["--max-length", "8", "--overlong-buffer", "9"], "--overlong-buffer 9: expected in [0, --max-length 8]"),
    (["--language", "xx"], "--language 'xx': expected one of ['ar', 'de',"),
    (["--rewards="], "--rewards (): expected at least one reward"),  # "rewards.names = ()", a field, not the flag
    (["--rewards", "format,format"], "--rewards ('format', 'format'): expected no duplicates"),
])
def test_score_flags_checked_together_are_named(capsys, tmp_path, flags, said):
    assert main(["score", str(tmp_path / "missing.jsonl"), *flags]) == 2  # before the file is read
    err = capsys.readouterr().err
    assert said in err and "rewards." not in err and "reward_pool." not in err, err


def test_eval_names_an_unknown_task_before_anything_else(capsys, tmp_path):
    # "--num-problems / --difficulty: unknown task 'bogus'" before; now before the checkpoint loads
    assert main(["eval", str(tmp_path / "no-checkpoint"), "--task", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "--task 'bogus': unknown task" in err and "arithmetic" in err and "--num-problems" not in err


@pytest.mark.parametrize("flags, named", [(["--raw"], "--raw"), (["--template", "chat"], "--template chat")])
def test_generate_refuses_a_prompt_format_beside_ids(capsys, tmp_path, flags, named):
    # the format was ignored for --ids (their tokens sampled unformatted, exit 0); now refused before the checkpoint
    assert main(["generate", str(tmp_path / "no-checkpoint"), "--ids", "1,2", *flags]) == 2
    err = capsys.readouterr().err
    assert f"r1jax generate: error: {named} formats --prompt's text, and --ids gives token ids" in err, err
    assert len(err.strip().splitlines()) == 1


def test_train_takes_overrides_after_its_options(capsys, tmp_path):
    parser = build_parser()
    args = parse_arguments(parser, ["train", "cfg.yaml", "--run-dir", "D", "a.b=1", "c=2"])
    assert (args.config, args.overrides, args.run_dir) == ("cfg.yaml", ["a.b=1", "c=2"], "D")
    args = parse_arguments(parser, ["--cpu-devices", "2", "train", "--run-dir", "D", "cfg.yaml", "a=1"])
    assert (args.config, args.overrides, args.run_dir, args.cpu_devices) == ("cfg.yaml", ["a=1"], "D", 2)
    # "unrecognized arguments: stages.0.steps=x5" before; now the override is read, and named
    run = tmp_path / "run"
    assert main(["train", "tiny", "--run-dir", str(run), "stages.0.steps=x5"]) == 2
    err = capsys.readouterr().err
    assert "stages.0.steps=x5" in err and "unrecognized" not in err and not run.exists()
    # other commands still refuse what they do not take
    assert "unrecognized arguments: --bogus" in usage_error(capsys, "info", "tiny", "--bogus")
    assert "unrecognized arguments: --bogus" in usage_error(capsys, "train", "tiny", "--bogus")
    # a command that takes no options after its arguments names itself, as every other refusal does ("r1jax:" before)
    err = usage_error(capsys, "tokenizer", "train", "--input", "a", "--out", "o", "--bogus")
    assert err.splitlines()[-1] == "r1jax tokenizer: error: unrecognized arguments: --bogus", err
    assert usage_error(capsys, "score", "rows.jsonl", "--bogus").splitlines()[-1] == (
        "r1jax score: error: unrecognized arguments: --bogus")


def test_the_config_argument_help_names_every_shipped_preset():
    from r1jax.rl.config import preset_names

    command = build_parser()._subparsers._group_actions[0].choices["info"]
    help_text = next(a.help for a in command._actions if a.dest == "config")
    assert preset_names() and all(name in help_text for name in preset_names()), help_text


def test_an_overlong_penalty_no_sample_can_reach_is_named_with_the_budget():
    """DAPO's soft penalty starts after rewards.max_length - overlong_buffer tokens; the defaults (1024 - 256)
    against the run's 8-token budget scored 0 on every sample, accepted silently before."""
    scored = ["rewards.names=[accuracy,format,overlong]", "rewards.weights=[1.0,1.0,1.0]"]
    load_fails(*scored, named="rewards.max_length=1024: the overlong penalty starts after max_length - "
                              "overlong_buffer = 768 tokens, but stage grpo samples at most 8")
    load_fails(*scored, "rewards.max_length=12", "rewards.overlong_buffer=4",
               named="max_length - overlong_buffer = 8 tokens, but stage grpo samples at most 8")
    config = load_config(TRAIN_CONFIG, [*scored, "rewards.max_length=8", "rewards.overlong_buffer=4"])
    assert (config.rewards.max_length, config.sampling.max_new_tokens) == (8, 8)
    # weighted 0 (logged, not trained on): taken as set
    load_config(TRAIN_CONFIG, ["rewards.names=[accuracy,format,overlong]", "rewards.weights=[1.0,1.0,0.0]"])


def test_a_config_file_named_otherwise_than_yaml_is_read_or_named(tmp_path):
    """run.YAML and a file without the suffix were "not a YAML file and not one of the presets" (they are files)."""
    upper = tmp_path / "run.YAML"
    upper.write_text(TRAIN_CONFIG.read_text())
    assert load_config(upper) == load_config(TRAIN_CONFIG)
    plain = tmp_path / "run"
    plain.write_text(TRAIN_CONFIG.read_text())
    load_fails(config=plain, named=f"{str(plain)!r} is a file, but a config file's name ends in .yaml or .yml")


@pytest.mark.parametrize("student, named", [("family=qwen3", "model.family='qwen3': must be one of"),
                                            ("num_experts_per_tok=9", "model.num_experts_per_tok=9: must be <=")])
def test_a_student_override_the_model_refuses_names_the_distill_stage(student, named):
    """The model's own check said "model.family='qwen3': ..." of a `model:` section that holds no such value."""
    stages = ("stages=[{name: rs, kind: rejection_sampling, steps: 1, batch_size: 8}, {name: student, kind: "
              f"distill, steps: 1, batch_size: 8, teacher: rs, student_overrides: [{student}]}}]")
    load_fails(stages, named=f"stages[student].student_overrides: {named}")


def test_a_null_list_item_is_named_with_its_place(tmp_path):
    """A YAML list's empty `-` (or `~`) said "Incompatible value 'None' for field of type 'str'", naming no key."""
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  tasks:\n    - arithmetic\n    -\n")
    load_fails(config=path, named=f"{path}: data.tasks.1 = null: expected a string")
    load_fails("sampling.prompt_buckets=[32,null]", named="sampling.prompt_buckets.1 = null: expected an integer")
    load_fails("rewards.weights=[1,~]", named="rewards.weights.1 = null: expected a number")
    path.write_text("stages:\n  - {name: a, kind: sft, steps: 1}\n  -\n")
    load_fails(config=path, named=f"{path}: stages.1 = null: expected a mapping of StageConfig's fields")
