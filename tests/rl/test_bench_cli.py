"""`r1jax bench`'s command (rl/cli/bench.py) with run_bench replaced: what reaches it from the flags, how a stopped
run reports its figures and exits, and the checks made before any measuring."""

import json
import signal

import pytest

from r1jax.errors import Interrupted
from r1jax.rl.bench import suite
from r1jax.rl.bench.report import FIGURES
from r1jax.rl.cli.main import main


def bench(*argv):
    return main(["bench", *argv], as_program=False)


def test_the_flags_reach_run_bench(monkeypatch, capsys):
    calls = []

    def run_bench(preset, overrides, **kwargs):
        calls.append((preset, list(overrides), {k: v for k, v in kwargs.items() if k not in ("say", "result")}))
        return {"preset": preset, "figure": 1.5}
    monkeypatch.setattr(suite, "run_bench", run_bench)
    assert bench("--preset", "tiny", "--json", "--workers", "1,3", "model.num_hidden_layers=1", "--quick") == 0
    assert json.loads(capsys.readouterr().out) == {"preset": "tiny", "figure": 1.5}
    assert bench("model.hidden_size=64", "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"preset": "bench", "figure": 1.5}
    assert calls == [("tiny", ["model.num_hidden_layers=1"], dict(quick=True, against_hf=False, workers=[1, 3])),
                     ("bench", ["model.hidden_size=64"], dict(quick=False, against_hf=False, workers=None))]


@pytest.mark.parametrize("workers, said", [("1,x", "--workers '1,x': expected comma-separated integers"),
                                           ("2,0", "--workers '2,0': worker counts must be >= 1"),
                                           ("-1", "--workers '-1': worker counts must be >= 1")])
def test_bad_worker_counts_are_refused_before_measuring(monkeypatch, capsys, workers, said):
    monkeypatch.setattr(suite, "run_bench", lambda *a, **k: pytest.fail("measured before refusing"))
    assert bench("--workers", workers) == 2
    err = capsys.readouterr().err
    assert f"r1jax bench: error: {said}" in err, err


def test_against_hf_without_torch_is_refused_before_measuring(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    monkeypatch.setattr(suite, "run_bench", lambda *a, **k: pytest.fail("measured before refusing"))
    assert bench("--against", "hf") == 2
    assert "r1jax bench: error: --against hf needs torch: pip install torch==" in capsys.readouterr().err


def stopping(error):
    """A run_bench that measures the device and one figure in the part 'sampler', then raises `error`."""
    def run_bench(preset, overrides, say, result, **kwargs):
        result["device"] = {"backend": "cpu"}
        result["decode_tokens_per_s"] = 12.5
        say("sampler")
        raise error
    return run_bench


@pytest.mark.parametrize("error, code", [(KeyboardInterrupt(), 128 + signal.SIGINT),
                                         (Interrupted(signal.SIGTERM), 128 + signal.SIGTERM)])
def test_an_interrupted_bench_prints_its_figures_and_exits_128_plus_the_signal(monkeypatch, capsys, error, code):
    monkeypatch.setattr(suite, "run_bench", stopping(error))
    assert bench("--json") == code
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["decode_tokens_per_s"] == 12.5 and report["incomplete"] == {"part": "sampler",
                                                                              "reason": "interrupted"}
    assert all(f.key in report for f in FIGURES) and report["prefill_tokens_per_s"] is None
    assert set(report["goals"]) == {f.key for f in FIGURES}  # each with its target, no verdict without a value
    assert report["goals"]["decode_step_ratio_1024_vs_128"] == {"target": "<= 2", "met": None}
    assert len(report["device"]["load_average_end"]) == 3
    assert "r1jax bench: stopped in 'sampler' (interrupted): the figures above were measured before it" in err


def test_a_part_that_fails_keeps_the_figures_and_raises_its_error(monkeypatch, capsys):
    monkeypatch.setattr(suite, "run_bench", stopping(RuntimeError("pool broke\nsecond line")))
    with pytest.raises(RuntimeError, match="pool broke"):
        bench("--json")
    out, err = capsys.readouterr()
    assert json.loads(out)["incomplete"] == {"part": "sampler", "reason": "RuntimeError: pool broke"}
    assert "stopped in 'sampler' (RuntimeError: pool broke)" in err


def test_a_failure_before_anything_is_measured_is_raised_as_it_is(monkeypatch, capsys):
    def run_bench(*args, **kwargs):
        raise ValueError("no device")
    monkeypatch.setattr(suite, "run_bench", run_bench)
    with pytest.raises(ValueError, match="no device"):
        bench("--json")
    out, err = capsys.readouterr()
    assert out == "" and "stopped in" not in err
