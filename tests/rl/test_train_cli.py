"""`r1jax train` (rl/cli/train.py), with the Trainer replaced by a stand-in that records what it was given: where a
run without --run-dir goes and which config it trains; what a stopped run says. (Which config a resume trains is
tests/rl/test_resume_changes.py's.)"""

import pathlib
import re

import pytest

from r1jax.rl.cli.main import main
from r1jax.rl.config import load_config
from r1jax.rl.train import trainer

from tests.rl.conftest import TRAIN_CONFIG


@pytest.fixture
def trained(monkeypatch):
    """The (config, run_dir) each Trainer was built with; the stand-in writes nothing and returns no evals."""
    seen = []

    class Recorder:
        def __init__(self, config, run_dir, console):
            seen.append((config, pathlib.Path(run_dir)))

        def run(self):
            return {}
    monkeypatch.setattr(trainer, "Trainer", Recorder)
    return seen


def test_a_run_without_run_dir_goes_under_runs_named_by_the_configs_stem(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(TRAIN_CONFIG)], as_program=False) == 0
    ((config, run_dir),) = trained
    assert re.fullmatch(r"runs/train_tiny-\d{8}-\d{6}", run_dir.as_posix()), run_dir
    assert config == load_config(TRAIN_CONFIG)
    assert main(["train", "seed=5"], as_program=False) == 0  # overrides alone: the default config, tiny
    config, run_dir = trained[1]
    assert re.fullmatch(r"runs/tiny-\d{8}-\d{6}", run_dir.as_posix()), run_dir
    assert config == load_config("tiny", ["seed=5"])


class Console:
    def __init__(self):
        self.lines = []

    def log(self, text):
        self.lines.append(text)


def test_a_stopped_run_says_its_step_and_how_to_resume():
    from r1jax.rl.cli.train import _print_outcome

    console = Console()
    _print_outcome(console, {"stopped_at_step": 17, "rl_gain": {"ignored": True}})
    assert console.lines == ["stopped at step 17; resume with --run-dir"]
    console = Console()
    entry = {"stage": "grpo", "k": 4, "pass@1": 0.25, "cons@4": 0.5, "pass@4": 0.75, "format_rate": 0.9,
             "n_problems": 20}
    _print_outcome(console, {"evals": [entry], "stopped_at_step": None})
    assert console.lines == ["        grpo: pass@1 0.250  cons@4 0.500  pass@4 0.750  format 0.90  "
                             "(20 held-out problems x 4)"]


def test_several_processes_without_a_run_dir_are_refused_before_waiting_for_the_peers(capsys):
    """--num-processes 2 says there are several: before, process 0 waited the peer timeout for process 1 (300 s by
    default; then exit 3, the peer named) and only a started pair was told that --run-dir is required."""
    import time

    start = time.monotonic()
    code = main(["train", str(TRAIN_CONFIG), "--coordinator", "127.0.0.1:1", "--num-processes", "2",
                 "--process-id", "0", "--peer-timeout-s", "20"], as_program=False)
    assert code == 2 and time.monotonic() - start < 10
    assert ("r1jax train: error: --run-dir is required with several processes: they all write one run directory"
            in capsys.readouterr().err)


# --- what a mutation review of round 19 let through (rl/cli/train.py) ------------------------------------------------

def said_lines(capsys):
    return [line.strip() for line in capsys.readouterr().err.splitlines()]


def test_a_resume_trains_the_runs_own_config_or_the_one_named_and_says_which(trained, tmp_path, capsys):
    from r1jax.rl.config import to_yaml

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(to_yaml(load_config(TRAIN_CONFIG, ["seed=7"])))
    assert main(["train", "--run-dir", str(run), "seed=9"], as_program=False) == 0
    assert trained[0] == (load_config(TRAIN_CONFIG, ["seed=9"]), run)  # the run's config, the override on top
    assert "config: the run's config.yaml with seed=9" in said_lines(capsys)
    assert main(["train", "tiny", "--run-dir", str(run)], as_program=False) == 0
    assert trained[1] == (load_config("tiny"), run)  # a config named again is the one trained
    assert "config: tiny" in said_lines(capsys)


def test_an_empty_run_dir_starts_the_default_config_and_a_named_config_starts_over_a_refused_start(trained, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--run-dir", str(empty)], as_program=False) == 0
    leftover = tmp_path / "left"  # what a refused start leaves: no config.yaml, so a resume is refused; a start is not
    (leftover / "checkpoints").mkdir(parents=True)
    assert main(["train", str(TRAIN_CONFIG), "--run-dir", str(leftover)], as_program=False) == 0
    odd = tmp_path / "a:" / "b"  # a colon is no URL: only "://" names a bucket
    assert main(["train", "--run-dir", str(odd)], as_program=False) == 0
    assert trained == [(load_config("tiny"), empty), (load_config(TRAIN_CONFIG), leftover), (load_config("tiny"), odd)]


def test_a_file_missing_inside_a_run_dir_that_is_still_there_is_a_bug_not_a_move(tmp_path, monkeypatch):
    class Missing:
        def __init__(self, config, run_dir, console):
            self.run_dir = pathlib.Path(run_dir)

        def run(self):
            self.run_dir.mkdir()
            (self.run_dir / "gone" / "metrics.jsonl").open("a")

    monkeypatch.setattr(trainer, "Trainer", Missing)
    with pytest.raises(FileNotFoundError):
        main(["train", str(TRAIN_CONFIG), "--run-dir", str(tmp_path / "run")], as_program=False)


def test_only_a_path_in_the_run_dir_or_the_dir_itself_counts_as_under_it(tmp_path):
    from r1jax.rl.cli.train import _missing_under

    run = tmp_path / "run"
    assert _missing_under(FileNotFoundError(2, "gone", str(run)), run)
    assert _missing_under(OSError(2, "gone", "/elsewhere", None, str(run / "a" / "b")), run)  # the rename's target
    assert not _missing_under(FileNotFoundError(2, "gone", str(tmp_path / "run2" / "x")), run)  # a sibling
    assert not _missing_under(FileNotFoundError(2, "gone", str(tmp_path)), run)
    wrapped = ValueError("save failed")
    wrapped.__cause__ = FileNotFoundError(2, "gone", str(run / "checkpoints"))
    assert _missing_under(wrapped, run)


def test_a_run_stopped_at_step_0_says_so_and_a_finished_run_prints_its_evals(monkeypatch, capsys, tmp_path):
    from r1jax.rl.cli.train import _print_outcome

    console = Console()
    _print_outcome(console, {"stopped_at_step": 0, "rl_gain": {"x": 1}})
    assert console.lines == ["stopped at step 0; resume with --run-dir"]
    entry = {"stage": "sft", "k": 1, "pass@1": 0.125, "format_rate": 0.5, "n_problems": 8}

    class Evaluated:
        def __init__(self, config, run_dir, console):
            pass

        def run(self):
            return {"evals": [entry], "stopped_at_step": None}

    monkeypatch.setattr(trainer, "Trainer", Evaluated)
    assert main(["train", str(TRAIN_CONFIG), "--run-dir", str(tmp_path / "run")], as_program=False) == 0
    assert "sft: pass@1 0.125  format 0.50  (8 held-out problems x 1)" in said_lines(capsys)
