"""rl/cli/common.py's shared checks at their exact bounds, and `r1jax init` / `r1jax compile`'s own, where a mutation
review (round 19) found a mutation of the code that no test caught."""

import argparse
import signal

import pytest

from r1jax.errors import UserError
from r1jax.rl.cli import common


def test_token_copies_up_to_int32_max_are_taken_and_one_more_is_refused():
    common.check_token_copies(1, 2**31 - 1, 1, "--samples")  # exactly 2^31-1 copies
    common.check_token_copies(3, 7, 2**31 // 21, "--samples")  # 21 x 102261126 = 2147483646
    with pytest.raises(UserError, match=r"^--samples 9: 1 rows x 2147483648 tokens .* "
                                        r"model.num_experts_per_tok=1 is over 2\^31-1 token copies"):
        common.check_token_copies(1, 2**31, 1, "--samples 9")
    with pytest.raises(UserError, match="x 1024 tokens .* model.num_experts_per_tok=8 is over"):  # the experts count
        common.check_token_copies(2**18, 1024, 8, "--samples")  # 2^31 copies: 2^28 rows x tokens alone fit


@pytest.mark.parametrize("text, ok", [(str(-2**63), True), (str(2**63 - 1), True), (str(-2**63 - 1), False),
                                      (str(2**63), False)])
def test_a_seed_is_any_64_bit_integer_and_no_more(text, ok):
    if ok:
        assert common.seed(text) == int(text)
    else:
        with pytest.raises(argparse.ArgumentTypeError, match=r"expected an integer seed in \[-2\^63, 2\^63-1\]"):
            common.seed(text)


def test_top_p_of_0_is_refused_and_1_taken():
    assert common.probability("1") == 1.0
    with pytest.raises(argparse.ArgumentTypeError, match=r"expected a finite number in \(0, 1\], got '0'"):
        common.probability("0")


def test_a_five_hop_chain_to_nothing_shows_three_hops_and_the_missing_path(tmp_path):
    for i in range(1, 5):  # l1 -> gone, l2 -> l1, l3 -> l2, l4 -> l3
        (tmp_path / f"l{i}").symlink_to("gone" if i == 1 else f"l{i - 1}")
    with pytest.raises(UserError, match=r"'.*/l4' is a symlink to 'l3' -> 'l2' -> 'l1' -> 'gone', which does not"):
        common.new_output_dir(tmp_path / "l4")  # 4 hops: each shown
    (tmp_path / "l5").symlink_to("l4")
    with pytest.raises(UserError, match=r"'.*/l5' is a symlink to 'l4' -> 'l3' -> 'l2' -> \.\.\. -> 'gone', which"):
        common.new_output_dir(tmp_path / "l5")


def test_a_file_to_write_is_said_as_created_when_it_does_not_exist_yet(tmp_path, monkeypatch):
    """export-gguf checks the file's directory (`named` the file): a new file "cannot be created", an existing one
    "cannot be written", whatever the directory."""
    def refuse(**kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(common.tempfile, "mkdtemp", refuse)
    with pytest.raises(UserError, match=r"^output 'x.gguf' cannot be created: nothing can be written in .* "
                                        r"\(Permission denied\)$"):
        common.check_creatable(tmp_path, "output 'x.gguf'", tmp_path / "x.gguf")
    (tmp_path / "x.gguf").write_text("")
    with pytest.raises(UserError, match=r"^output 'x.gguf' cannot be written: "):
        common.check_creatable(tmp_path, "output 'x.gguf'", tmp_path / "x.gguf")


def test_a_longer_field_of_the_same_prefix_is_not_the_flags():
    err = UserError("sampling.top_k_experts=3: bad")
    assert common.flags_in_error(err, "sampling", {"top_k": ("--top-k", 5)}) is err


def test_sigterm_interrupts_only_inside_its_block():
    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        with common.sigterm_interrupts():
            assert signal.getsignal(signal.SIGTERM) is not mine
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_config_after_its_overrides_is_named_as_misplaced(capsys, tmp_path):
    """`r1jax train seed=1 run.yaml` said "'run.yaml' is not of the form dotted.key=value"."""
    from r1jax.rl.cli.main import main

    assert common.split_config_and_overrides("seed=1", ["grpo.kl_coef=0"]) == ("tiny", ["seed=1", "grpo.kl_coef=0"])
    with pytest.raises(UserError, match=r"^'run.yaml' after the override 'seed=1': the config .* comes first"):
        common.split_config_and_overrides("seed=1", ["grpo.kl_coef=0", "run.yaml"])
    assert main(["train", "seed=1", "tiny", "--run-dir", str(tmp_path / "run")]) == 2
    assert "'tiny' after the override 'seed=1'" in capsys.readouterr().err and not (tmp_path / "run").exists()


# --- init.py ---------------------------------------------------------------------------------------------------------

def test_init_seed_0_overrides_the_configs_seed_and_the_line_says_what_was_written(capsys, tmp_path):
    from r1jax.rl.checkpoint import load_config as checkpoint_config
    from r1jax.rl.cli.main import main

    out = tmp_path / "ck"
    assert main(["init", "tiny", str(out), "seed=5", "--seed", "0", "model.num_hidden_layers=1"]) == 0
    config = checkpoint_config(out)
    assert (config.seed, config.model.num_hidden_layers) == (0, 1)  # --seed 0 is a seed, not "none given"
    # configs/tiny.yaml: fsdp fills the 8 test devices
    assert capsys.readouterr().out == f"wrote {out / '0'} (deepseek_v3, seed 0, mesh data=1 fsdp=8 expert=1 tensor=1)\n"
    assert main(["init", "tiny", str(tmp_path / "ck5"), "seed=5", "model.num_hidden_layers=1"]) == 0
    assert ", seed 5, mesh" in capsys.readouterr().out  # no --seed: the config's


@pytest.mark.parametrize("argv, named", [
    (["--cpus=2", "info"], "--cpus=2"),  # a guess at the global option: ran on one device (a near miss, as
    # --cpu_devices, is named with the option meant: test_a_misspelt_option_after_the_command_names_the_one_meant)
    (["--cpu-devices", "2", "--verbose", "info", "tiny"], "--verbose"),
    (["-x", "generate", "run", "--ids", "1"], "-x"),  # a command without KEY=VALUE: named the command, not r1jax
])
def test_an_unknown_option_before_the_command_is_refused_not_dropped(capsys, argv, named):
    from r1jax.rl.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2
    command = next(a for a in argv[argv.index(named) + 1:] if not a.startswith("-"))
    assert err.startswith(f"r1jax: error: unrecognized arguments before {command}: {named}"), err
    assert named in err and "--cpu-devices N" in err


def test_options_after_the_command_and_a_global_option_before_it_still_parse():
    from r1jax.rl.cli.main import build_parser, parse_arguments

    argv = ["--cpu-devices", "2", "export-gguf", "ck", "out.gguf", "--dtype", "f16", "sharding.fsdp=2"]
    args = parse_arguments(build_parser(), argv)
    assert args.cpu_devices == 2 and args.dtype == "f16" and args.overrides == ["sharding.fsdp=2"]


@pytest.mark.parametrize("argv, said", [
    (["info", "tiny", "--cpu-devices", "2"], "--cpu-devices 2: r1jax's own option goes before the command: "
                                             "r1jax --cpu-devices 2 info tiny"),
    (["train", "tiny", "--cpu-devices=2", "stages.0.steps=2"],  # a command taking KEY=VALUE
     "--cpu-devices=2: r1jax's own option goes before the command: r1jax --cpu-devices=2 train tiny stages.0.steps=2"),
    # given no value: "r1jax --cpu-devices info tiny" was suggested, which takes 'info' as the device count
    (["info", "tiny", "--cpu-devices"], "--cpu-devices: r1jax's own option goes before the command, with its value: "
                                        "r1jax --cpu-devices N info tiny"),
    (["info", "tiny", "--cpu-devices", "--json"], "--cpu-devices: r1jax's own option goes before the command, with "
                                                  "its value: r1jax --cpu-devices N info tiny --json"),
])
def test_the_global_option_after_the_command_says_where_it_goes(capsys, argv, said):
    """It said only "unrecognized arguments: --cpu-devices 2", as if r1jax had no such option."""
    from r1jax.rl.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"r1jax: error: {said}"


@pytest.mark.parametrize("argv, said", [
    (["info", "tiny", "--cpu_devices", "2"], "r1jax info: error: unrecognized option --cpu_devices: did you mean "
                                             "--cpu-devices (r1jax's own option: it goes before the command)?"),
    (["train", "tiny", "--run_dir", "x", "a=1"], "r1jax train: error: unrecognized option --run_dir: did you mean "
                                                 "--run-dir?"),
    (["generate", "ck", "--ids", "1", "--max_new_tokens=3"], "r1jax generate: error: unrecognized option "
                                                             "--max_new_tokens: did you mean --max-new-tokens?"),
    (["info", "tiny", "--bogus"], "r1jax info: error: unrecognized arguments: --bogus"),  # close to nothing
    # before the command the value was taken as the command: "invalid choice: '2'"
    (["--cpu_devices", "2", "info", "tiny"], "r1jax: error: unrecognized option --cpu_devices: did you mean "
                                             "--cpu-devices?"),
    (["--cpu-devices", "2", "--compilation_cache", "none", "info", "tiny"],
     "r1jax: error: unrecognized option --compilation_cache: did you mean --compilation-cache?"),
    (["--compilation-cache=none", "--cpu_devices=2", "info"], "r1jax: error: unrecognized option --cpu_devices: did "
                                                              "you mean --cpu-devices?"),
])
def test_a_misspelt_option_after_the_command_names_the_one_meant(capsys, argv, said):
    """A typo'd option said only "unrecognized arguments: --cpu_devices 2"."""
    from r1jax.rl.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == said
