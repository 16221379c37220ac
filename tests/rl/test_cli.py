"""The r1jax command line: help, info counts, init + checkpoint round trip, --cpu-devices, errors."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from r1jax.model.factory import init_policy
from r1jax.rl.checkpoint import load_config as load_checkpoint_config, load_policy
from r1jax.rl.cli.main import COMMANDS, main
from r1jax.rl.config import load_config
from r1jax.sharding.jax_private import accelerators_visible
from r1jax.sharding.mesh import ShardingConfig, build_mesh
from r1jax.sharding.rules import Rules
from tests.rl.conftest import subprocess_env


def run_main(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("preset,total,active", [
    ("deepseek_v3_671b", 671_026_404_352, 37_552_282_624),
    ("qwen3_30b_a3b", 30_532_122_624, 3_353_032_704),
    ("qwen3_30b_a3b_r1zero", 30_532_122_624, 3_353_032_704),
])
def test_info_reports_published_parameter_counts(capsys, preset, total, active):
    code, out, _ = run_main(capsys, "info", preset)
    report = json.loads(out)
    assert code == 0
    assert (report["params_total"], report["params_active"]) == (total, active)
    assert report["family"] == preset.split("_")[0] + ("_v3" if preset.startswith("deepseek") else "_moe")


def test_help_explains_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    top = capsys.readouterr().out
    assert "--cpu-devices" in top
    for name, _, _ in COMMANDS:
        assert name in top
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        assert len(capsys.readouterr().out.splitlines()) > 3


def test_every_option_with_a_default_says_it_in_its_help():
    """`r1jax COMMAND --help` names each option's default where the option has one (a flag's off state aside):
    generate's --max-new-tokens 64, --top-p 0.95 and --samples 1, score's --rewards, --timeout, --workers, ...
    and tokenizer train's --vocab-size were used without the help saying what they were."""
    import argparse

    from r1jax.rl.cli.main import build_parser

    def options(parser, name):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, child in action.choices.items():
                    yield from options(child, f"{name} {sub}")
            elif action.option_strings and action.default not in (None, argparse.SUPPRESS, []) \
                    and not isinstance(action.default, bool):  # a repeatable flag's [] is none given
                yield name, action

    found = list(options(build_parser(), "r1jax"))
    assert len(found) >= 13  # generate, score, tokenizer train
    silent = [f"{name} {action.option_strings[0]}" for name, action in found
              if "default" not in (action.help or "")]
    assert not silent, silent
    generate = next(p for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
                    for n, p in a.choices.items() if n == "generate")
    assert "(default 64)" in " ".join(generate.format_help().split())  # the value itself, as argparse fills it


def test_init_writes_a_checkpoint_that_restores_equal_params(capsys, tmp_path):
    code, out, _ = run_main(capsys, "init", "tiny", str(tmp_path / "ck"), "model.num_hidden_layers=2",
                            "--seed", "3")
    assert code == 0 and "wrote" in out
    config, restored = load_policy(tmp_path / "ck")
    assert config.seed == 3 and config == load_config("tiny", ["seed=3"])
    mesh = build_mesh(config.sharding)  # init creates the parameters sharded, as here
    expected = nnx.state(init_policy(config.model, 3, mesh, config.sharding.logical_rules()))
    for a, b in zip(jax.tree.leaves(nnx.state(restored)), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    mesh = build_mesh(ShardingConfig(data=1, fsdp=2, expert=2, tensor=2))
    _, resharded = load_policy(tmp_path / "ck", mesh, Rules.preset("fsdp_expert_tensor"))
    gate = resharded.segments[1].block.mlp.gate_proj[...]
    assert gate.sharding.spec[1] == "expert"
    np.testing.assert_array_equal(np.asarray(gate), np.asarray(restored.segments[1].block.mlp.gate_proj[...]))


def test_init_refuses_to_overwrite_and_bad_input_exits_2(capsys, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    code, _, err = run_main(capsys, "init", "tiny", str(tmp_path / "full"))
    assert code == 2 and "not empty" in err
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    # an output that is a file: a usage error (a traceback before; import-hf checks its output the same way)
    for command in (["init", "tiny"], ["export-hf", str(tmp_path)]):
        code, _, err = run_main(capsys, *command, str(tmp_path / "full" / "x"))
        assert code == 2 and "is a file; give a new or empty directory" in err, (command, err)
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    code, _, err = run_main(capsys, "info", "tiny", "model.hiden_size=3")
    assert code == 2 and "model.hiden_size" in err
    code, _, err = run_main(capsys, "init", "tiny", str(tmp_path / "o"), "sharding.data=3")
    assert code == 2 and "sharding" in err and not (tmp_path / "o").exists()


PROBE = """
import logging, sys
logging.getLogger("jax").setLevel(logging.ERROR)  # as `r1jax train` sets it: libtpu's errors then reach stderr
if sys.argv[1] == "pin":
    from r1jax.rl.cli.main import pin_cpu_without_accelerators
    pin_cpu_without_accelerators()
import jax
print(jax.default_backend())
"""


def test_a_host_without_accelerators_runs_on_the_cpu_without_probing_libtpu(tmp_path):
    assert accelerators_visible() is False  # the test's premise: no TPU or GPU here
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no JAX_PLATFORMS; libtpu comes with the test extra
    runs = {how: subprocess.run([sys.executable, "-c", PROBE, how], capture_output=True, text=True, env=env,
                                timeout=300) for how in ("pin", "unpinned")}
    assert runs["unpinned"].returncode == 0 and "TPU" in runs["unpinned"].stderr  # what users saw
    assert runs["pin"].returncode == 0 and runs["pin"].stdout.strip() == "cpu"
    assert "TPU" not in runs["pin"].stderr, runs["pin"].stderr


def test_cpu_devices_flag_fakes_devices_before_jax_starts(tmp_path):
    # no device count in the environment; JAX's and XLA's settings are the tests' (the compilation cache and the
    # quick-to-compile flags: the init program compiled optimised and uncached took ~5 s of the run's ~15 s)
    compile_settings = {k: v for k, v in subprocess_env().items() if k.startswith(("JAX_", "XLA_"))}
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **compile_settings}
    assert env["JAX_PLATFORMS"] == "cpu" and "device_count" not in env.get("XLA_FLAGS", "")
    result = subprocess.run([sys.executable, "-m", "r1jax", "--cpu-devices", "4", "init", "tiny",
                             str(tmp_path / "ck"), "sharding.expert=2"], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "mesh data=1 fsdp=2 expert=2 tensor=1" in result.stdout


@pytest.mark.parametrize("count, said", [("0", "got 0"), ("-2", "got -2"), ("two", "got 'two'")])
def test_a_bad_cpu_device_count_is_a_usage_error_naming_the_flag(capsys, count, said):
    with pytest.raises(SystemExit) as exit_:  # argparse's usage error, before JAX starts
        main(["--cpu-devices", count, "info", "tiny"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"argument --cpu-devices: expected an integer >= 1, {said}" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("flag, value, said", [
    ("--hbm-gib", "inf", "expected a finite number > 0, got 'inf'"),  # an OverflowError traceback before
    ("--hbm-gib", "nan", "expected a finite number > 0, got 'nan'"),
    ("--hbm-gib", "0", "expected a finite number > 0, got '0'"),  # 0 meant the compiler's figure, silently
    ("--hbm-gib", "-1", "expected a finite number > 0, got '-1'"),
    ("--prompt-len", "0", "expected an integer >= 1, got 0"), ("--new-tokens", "-3", "expected an integer >= 1"),
    ("--micro-batches", "0", "expected an integer >= 1, got 0"),
])
def test_compile_sizes_are_usage_errors_naming_the_flag(capsys, flag, value, said):
    with pytest.raises(SystemExit) as exit_:  # argparse's, before anything compiles
        main(["compile", "tiny", "--topology", "v5p-8", flag, value])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"argument {flag}: {said}" in err and "Traceback" not in err


def test_compile_hbm_override_is_per_chip_and_a_v4_chip_holds_two_devices():
    from r1jax.rl.cli.compile import hbm_per_device
    from r1jax.sharding.topology import parse_topology

    assert hbm_per_device(32, parse_topology("v4-16")) == 16 * 2**30
    assert hbm_per_device(95, parse_topology("v5p-16")) == 95 * 2**30


@pytest.mark.parametrize("size, why", [("5 gigs", "expected a size"), ("0GB", "at least one byte"),
                                       ("0.0001KB", "at least one byte")])
def test_export_hf_rejects_bad_shard_sizes_before_reading_the_checkpoint(tmp_path, capsys, size, why):
    assert main(["export-hf", str(tmp_path / "missing"), str(tmp_path / "out"), "--max-shard-size", size]) == 2
    assert why in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_list_overrides_through_the_command_line(capsys, tmp_path):
    code, _, _ = run_main(capsys, "init", "tiny", str(tmp_path / "ck"), "stages.0.steps=5", "stages.1.lr=1e-5",
                          "rewards.names=[format,accuracy]")
    saved = load_checkpoint_config(tmp_path / "ck")
    assert code == 0 and [s.steps for s in saved.stages] == [5, load_config("tiny").stages[1].steps]
    assert saved.stages[1].lr == 1e-5 and saved.rewards.names == ("format", "accuracy")
    for override, named in [("stages.0.steps=abc", "stages.0.steps=abc"), ("stages.9.steps=1", "2 items"),
                            ("stages.x.steps=1", "stages.x.steps=1"), ("a..b=1", "a..b=1"),
                            ("stages.0.nope=1", "nope")]:
        code, out, err = run_main(capsys, "info", "tiny", override)
        assert code == 2 and named in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    code, _, err = run_main(capsys, "train", "tiny", "stages.0.steps=x5", "--run-dir", str(tmp_path / "run"))
    assert code == 2 and "stages.0.steps=x5" in err and not (tmp_path / "run").exists()


def test_train_refuses_a_cloud_storage_run_directory(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a gs:// path taken as local would be created
    code, _, err = run_main(capsys, "train", "tiny", "--run-dir", "gs://bucket/run")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "--run-dir gs://bucket/run" in err and "local file APIs" in err and "gcsfuse" in err
    assert not any(tmp_path.iterdir())


def test_cpu_devices_flag_pins_the_cpu_even_when_jax_was_imported_first(tmp_path):
    """JAX reads JAX_PLATFORMS when it is imported: with JAX imported before the flag took effect, setting the
    variable alone left the platforms unset, and an installed libtpu was probed (its TPU errors printed)."""
    probe = ("import jax\nfrom r1jax.rl.cli.main import fake_cpu_devices\nfake_cpu_devices(2)\n"
             "print(jax.config.jax_platforms, jax.config.jax_num_cpu_devices)\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no JAX_PLATFORMS
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["cpu", "2"]


def test_output_piped_to_a_reader_that_stops_early_ends_without_a_traceback(tmp_path):
    """`r1jax info | head -1`: the reader closes the pipe early and the output finds it closed (`true` reads
    nothing and is gone long before r1jax has started: the same, every time)."""
    env = {**subprocess_env(), "HOME": str(tmp_path)}
    result = subprocess.run(f"{sys.executable} -m r1jax info tiny | true", shell=True, capture_output=True,
                            text=True, env=env, timeout=300)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr


@pytest.mark.parametrize("n, shown", [(0, "0 B"), (999, "999 B"), (1234, "1.23 KB"), (1.88e11, "188 GB"),
                                      (9.16e12, "9.16 TB"),  # "9.16e+03 GB" before
                                      (999.6e9, "1 TB"), (5e18, "5,000 PB")])
def test_compile_report_sizes_read_without_exponents(n, shown):
    from r1jax.rl.cli.compile import _size

    assert _size(n) == shown


def test_the_outcome_names_pass_at_1_once_with_one_sample():
    """With eval.samples 1 the summary read "pass@1 0.000 cons@1 0.000 pass@1 0.000"."""
    from r1jax.rl.cli.train import _print_outcome

    lines = []

    class Console:
        def log(self, text):
            lines.append(text)

    entry = {"stage": "grpo", "k": 1, "pass@1": 0.5, "cons@1": 0.5, "format_rate": 1.0, "n_problems": 4}
    _print_outcome(Console(), {"evals": [entry, {**entry, "k": 4, "cons@4": 0.75, "pass@4": 1.0}]})
    assert lines[0].count("pass@1") == 1 and "cons@1" not in lines[0] and "x 1)" in lines[0]
    assert "pass@1 0.500  cons@4 0.750  pass@4 1.000" in lines[1]


def test_a_run_directory_moved_while_the_run_trains_is_one_line_naming_it(capsys, tmp_path, monkeypatch):
    """A run directory renamed mid-run ended the run with a traceback (FileNotFoundError: .../metrics.jsonl at the
    next row); now one line saying it was moved and where to resume."""
    import pathlib

    from r1jax.rl.train import trainer

    run_dir, moved = tmp_path / "run", tmp_path / "moved"

    class Moved:
        def __init__(self, config, run_dir, console):
            self.run_dir = pathlib.Path(run_dir)

        def run(self):
            self.run_dir.mkdir()
            self.run_dir.rename(moved)
            (self.run_dir / "metrics.jsonl").open("a")  # what the next row's write meets

    monkeypatch.setattr(trainer, "Trainer", Moved)
    config = pathlib.Path(__file__).parent / "data" / "train_tiny.yaml"
    assert main(["train", str(config), "--run-dir", str(run_dir)], as_program=False) == 2
    err = capsys.readouterr().err
    assert f"r1jax train: error: --run-dir {str(run_dir)!r} was removed or moved while the run trained" in err, err
    assert "Traceback" not in err and moved.is_dir()


def test_a_checkpoint_the_disk_refused_leaves_no_partial_directory(capsys, tmp_path, monkeypatch):
    """`init` / `import-hf` into a disk that filled mid-save printed Orbax's tracebacks and left OUT holding a
    partial step, which refused the next try ("exists and is not empty; refusing to overwrite")."""
    import orbax.checkpoint as ocp

    def full(self):
        (self.directory / "0.orbax-checkpoint-tmp").mkdir(exist_ok=True)
        raise ValueError(f'RESOURCE_EXHAUSTED: Failed writing: "{self.directory}/0.orbax-checkpoint-tmp/d/a": Failed '
                         "to write 36295 bytes to file 22: No space left on device [os_error_code='28']")

    monkeypatch.setattr(ocp.CheckpointManager, "wait_until_finished", full)
    out = tmp_path / "ck"
    assert main(["init", "tiny", str(out), "model.num_hidden_layers=1"], as_program=False) == 2
    err = capsys.readouterr().err
    assert f"r1jax init: error: checkpoint {str(out)!r} cannot be written: no space left on device: " in err, err
    assert "Traceback" not in err and not out.exists()


def test_a_refused_new_run_says_its_own_error_not_that_its_directory_moved(capsys, tmp_path):
    """A new run refused by its checks takes its directory back; the catch-all for a directory moved mid-run read
    that as a move and said "was removed or moved while the run trained (UserError: ...)" for every refused start."""
    import pathlib

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": 1}\n')
    config = pathlib.Path(__file__).parent / "data" / "train_tiny.yaml"
    run_dir = tmp_path / "run"
    assert main(["train", str(config), "--run-dir", str(run_dir), f"data.path={bad}"], as_program=False) == 2
    err = capsys.readouterr().err
    assert "removed or moved" not in err and "field 'prompt' must be a string" in err, err
    assert not run_dir.exists()


def test_a_bug_keeps_its_traceback_when_the_run_directory_is_gone(tmp_path, monkeypatch):
    """A bug in a new run's start (its directory then taken back) is a bug: it is raised, not one line."""
    import pathlib
    import shutil

    from r1jax.rl.train import trainer

    class Buggy:
        def __init__(self, config, run_dir, console):
            self.run_dir = pathlib.Path(run_dir)

        def run(self):
            self.run_dir.mkdir()
            shutil.rmtree(self.run_dir)  # what Trainer.release does for a start that did not begin
            raise KeyError("a bug")

    monkeypatch.setattr(trainer, "Trainer", Buggy)
    config = pathlib.Path(__file__).parent / "data" / "train_tiny.yaml"
    with pytest.raises(KeyError, match="a bug"):
        main(["train", str(config), "--run-dir", str(tmp_path / "run")], as_program=False)


def test_a_resume_under_an_empty_saved_config_is_refused(capsys, tmp_path, monkeypatch):
    """An empty config.yaml in a run directory (a file cut short) read as every default: the resume trained the
    default config there and wrote it over config.yaml."""
    from r1jax.rl.train.trainer import Trainer

    def trains(self):
        raise AssertionError(f"trained {self.run_dir}")

    monkeypatch.setattr(Trainer, "run", trains)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("\n")
    assert main(["train", "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"'{run / 'config.yaml'}' is empty" in err and "r1jax train CONFIG --run-dir" in err, err
    assert (run / "config.yaml").read_text() == "\n"
