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
