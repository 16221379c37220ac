"""`r1jax score`: offline scoring of saved completions with the training rewards, row order kept."""

import json
import subprocess
import sys

import pytest

from r1jax.rl import rewards as rewards_module
from r1jax.rl.cli import score
from r1jax.rl.cli.main import main
from r1jax.rl.rewards import ScoreResult
from tests.rl.test_data import ROOT, write_jsonl

ROWS = [
    {"id": 0, "completion": "<think> 3+4=7 </think> <answer> 7 </answer>", "answer": "7", "task": "arithmetic"},
    {"id": 1, "completion": r"The answer is \boxed{\frac{1}{2}}", "answer": 0.5},
    {"id": 2, "completion": "<think> x </think> <answer> 9^{9^{9^{9}}} </answer>", "answer": "1"},
    {"id": 3, "completion": "<think> 8*2 </think> <answer> (3+5)*2 </answer>", "answer": "(3+5)*2",
     "task": "countdown", "prompt": "Make 16 from 2, 3, 5 (+-*/, each at most once)"},
    {"id": 4, "completion": "<think> expand </think> <answer> x^2+x-6 </answer>", "answer": "x^2-x-6",
     "task": "algebra"},
    {"id": 5, "completion": "", "answer": "3"},
]


def test_score_prints_each_row_with_rewards_and_status_in_input_order(tmp_path, capsys):
    path = write_jsonl(tmp_path / "c.jsonl", ROWS)
    assert main(["score", str(path), "--timeout", "5", "--workers", "2"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["id"] for row in out] == [0, 1, 2, 3, 4, 5]
    assert [{k: v for k, v in row.items() if k not in ("rewards", "status")} for row in out] == ROWS
    assert [row["rewards"] for row in out] == [
        {"accuracy": 1.0, "format": 1.0}, {"accuracy": 1.0, "format": 0.0}, {"accuracy": 0.0, "format": 1.0},
        {"accuracy": 1.0, "format": 1.0}, {"accuracy": 0.0, "format": 1.0}, {"accuracy": 0.0, "format": 0.0}]
    assert {row["status"] for row in out} == {"ok"}


def test_a_scored_file_scored_again_keeps_no_field_of_its_first_scoring(tmp_path, capsys):
    scored = [{"id": 0, "completion": "<think> 3+4 </think> <answer> 7 </answer>", "answer": "7", "task": "arithmetic",
               "rewards": {"accuracy": 0.0}, "status": "timeout", "error": "past the 0.1 s limit",
               "code_status": "timeout"}]
    path = write_jsonl(tmp_path / "scored.jsonl", scored)
    assert main(["score", str(path), "--workers", "1"]) == 0
    (out,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # before: the first scoring's error and code_status stayed beside the new status "ok"
    assert out == {"id": 0, "completion": scored[0]["completion"], "answer": "7", "task": "arithmetic",
                   "rewards": {"accuracy": 1.0, "format": 1.0}, "status": "ok"}


def test_score_selects_rewards_and_applies_the_overlong_budget(tmp_path, capsys):
    rows = [{"completion": "<think> deux </think> <answer> 2 </answer>", "answer": "2", "length": 900},
            {"completion": "<think> two </think> <answer> 2 </answer>", "answer": "2", "length": 10}]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    assert main(["score", str(path), "--rewards", "language,overlong", "--language", "en", "--workers", "1",
                 "--max-length", "1000", "--overlong-buffer", "200"]) == 0
    out = [json.loads(line)["rewards"] for line in capsys.readouterr().out.splitlines()]
    assert out == [{"language": 1.0, "overlong": -0.5}, {"language": 1.0, "overlong": 0.0}]


def test_score_bad_input_fails_with_file_row_and_field_before_scoring(tmp_path, capsys):
    path = write_jsonl(tmp_path / "c.jsonl", [ROWS[0], {"completion": "x"}])
    assert main(["score", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "c.jsonl: row 2: field 'answer' is missing" in captured.err
    path = write_jsonl(tmp_path / "d.jsonl", [{"completion": None, "answer": "1"}])
    assert main(["score", str(path)]) == 2
    assert "row 1: field 'completion' is missing" in capsys.readouterr().err  # "must be a string, got NoneType"
    path = write_jsonl(tmp_path / "e.jsonl", [{"completion": 5, "answer": "1"}])
    assert main(["score", str(path)]) == 2
    assert "row 1: field 'completion' must be a string, got int" in capsys.readouterr().err
    good = write_jsonl(tmp_path / "good.jsonl", ROWS[:1])
    assert main(["score", str(good), "--rewards", "accuracy,bogus"]) == 2
    err = capsys.readouterr().err
    # named as the flag score takes, not the config field; no advice about a config setting score cannot take
    assert "--rewards: unknown reward(s) ['bogus']" in err and "score runs these only" in err
    assert "rewards.names" not in err and "import_modules" not in err
    with pytest.raises(SystemExit) as exit_info:  # a usage error naming the flag, as argparse gives it
        main(["score", str(good), "--workers", "0"])
    assert exit_info.value.code == 2 and "--workers: expected an integer >= 1, got 0" in capsys.readouterr().err


def test_score_refuses_a_reference_no_answer_can_match_as_training_does(tmp_path, capsys):
    # a countdown target with no numbers in its prompt: a correct expression scored 0 (training refuses the row)
    rows = [ROWS[3], {"completion": "<answer> (3+5)*2 </answer>", "answer": "16", "task": "countdown"}]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    assert main(["score", str(path), "--workers", "1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "c.jsonl: row 2: field 'answer': the reference '16' is not an expression of the numbers" in captured.err
    path = write_jsonl(tmp_path / "d.jsonl", [{"completion": "<answer> 1 </answer>", "answer": "x",
                                              "task": "arithmetic"}])
    assert main(["score", str(path), "--workers", "1"]) == 2
    assert "d.jsonl: row 1: field 'answer': the reference 'x' is not a number" in capsys.readouterr().err
    assert main(["score", str(path), "--workers", "1", "--rewards", "format"]) == 0  # no accuracy: no reference
    assert json.loads(capsys.readouterr().out)["rewards"] == {"format": 0.0}


def test_score_prints_parquet_values_json_cannot_hold_as_strings(tmp_path, capsys):
    import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    when = datetime.datetime(2024, 5, 6, 7, 8, 9)
    rows = [{**ROWS[0], "id": i, "created": when, "blob": b"\x00ab", "score": [float("nan"), -float("inf"), 0.5][i],
             "scores": [float("inf"), 1.0]} for i in range(2)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    assert main(["score", str(tmp_path / "c.parquet"), "--workers", "1"]) == 0
    # strict JSON: a bare NaN or Infinity, which json.dumps writes, is refused (jq, JSON.parse, Go's encoding/json)
    out = [json.loads(line, parse_constant=pytest.fail) for line in capsys.readouterr().out.splitlines()]
    assert [(row["id"], row["created"], row["blob"]) for row in out] == [
        (0, "2024-05-06 07:08:09", "b'\\x00ab'"), (1, "2024-05-06 07:08:09", "b'\\x00ab'")]
    assert [(row["score"], row["scores"]) for row in out] == [("nan", ["inf", 1.0]), ("-inf", ["inf", 1.0])]
    assert [row["rewards"] for row in out] == [{"accuracy": 1.0, "format": 1.0}] * 2


def test_an_empty_file_is_said_to_hold_no_rows(tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_text("")
    assert main(["score", str(tmp_path / "empty.jsonl")]) == 0  # no output at all before, nothing said
    said = capsys.readouterr()
    assert said.out == "" and said.err.strip() == (
        f"r1jax score: {tmp_path / 'empty.jsonl'} holds no rows: nothing scored")


def test_score_as_a_subprocess_streams_json_lines(tmp_path):
    # a lone surrogate ("\ud83d", half an emoji, valid JSON) could not be printed as UTF-8: a traceback, and
    # the rows after it lost; it comes back escaped as the input had it, other text as it is
    odd = [{"id": 2, "note": "\ud83d", "completion": "<answer> 7 </answer>", "answer": "7"},
           {"id": 3, "note": "日本", "completion": "<answer> 7 </answer>", "answer": "7"}]
    path = write_jsonl(tmp_path / "c.jsonl", ROWS[:2] + odd)
    result = subprocess.run([sys.executable, "-m", "r1jax", "score", str(path), "--workers", "1"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [json.loads(line)["rewards"]["accuracy"] for line in lines] == [1.0, 1.0, 1.0, 1.0]
    assert '"note": "\\ud83d"' in lines[2] and '"note": "日本"' in lines[3]
    assert [json.loads(line)["note"] for line in lines[2:]] == ["\ud83d", "日本"]


def test_score_runs_code_rows_in_the_sandbox_and_prints_their_code_reward(tmp_path, capsys):
    doubled = ["assert f(2) == 4", "assert f(5) == 10"]
    rows = [{"task": "code", "completion": "<think> t </think> <answer> def f(x): return 2*x </answer>",
             "tests": json.dumps(doubled), "entry_point": "f"},  # JSON text, as data files may hold it (refused)
            {"task": "code", "completion": "```python\ndef f(x):\n    return x + 2\n```", "tests": doubled},
            {"task": "code", "completion": "```python\nprint(2 * int(input()))\n```",
             "tests": [{"input": "4\n", "output": "8\n"}]},
            {"task": "code", "completion": "<answer> while True: pass </answer>",
             "tests": [{"input": "", "output": "1"}]},
            {"completion": "<think> 3+4=7 </think> <answer> 7 </answer>", "answer": "7", "task": "arithmetic"}]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    assert main(["score", str(path), "--rewards", "code,format", "--timeout", "20", "--workers", "2",
                 "--partial"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["rewards"] for row in out] == [{"code": 1.0, "format": 1.0}, {"code": 0.5, "format": 0.0},
                                                {"code": 1.0, "format": 0.0}, {"code": 0.0, "format": 0.0},
                                                {"code": 0.0, "format": 1.0}]
    assert [row.get("code_status") for row in out] == ["passed", "failed", "passed", "timeout", None]
    path = write_jsonl(tmp_path / "bad.jsonl", [{"task": "code", "completion": "x"}])
    assert main(["score", str(path), "--rewards", "code"]) == 2
    assert "bad.jsonl: row 1: field 'tests' is missing" in capsys.readouterr().err
    path = write_jsonl(tmp_path / "bad.jsonl", [{"task": "code", "completion": "x", "tests": "[assert"}])
    assert main(["score", str(path), "--rewards", "code"]) == 2
    assert "bad.jsonl: row 1: field 'tests' is a string but not a JSON list" in capsys.readouterr().err
    path = write_jsonl(tmp_path / "bad.jsonl", [{"completion": "x", "tests": doubled}])  # no "task"
    assert main(["score", str(path), "--rewards", "code"]) == 2  # it said "field 'answer' is missing"
    assert "row 1: the row has 'tests' but no 'task': a code row needs \"task\": \"code\"" in capsys.readouterr().err


def test_each_chunk_leaves_every_row_its_timeout(tmp_path, monkeypatch):
    """256 rows per chunk on 1 worker at --timeout 10 may take 2,560 s: the pool's default 600 s batch deadline
    scored the chunk's last rows as timeouts that had not used their 10 s."""
    from r1jax.rl import rewards
    from r1jax.rl.cli.score import CHUNK

    given = []

    class Recording(rewards.RewardPool):
        def __init__(self, names, config, **kwargs):
            given.append(config)
            super().__init__(names, config, **kwargs)

    monkeypatch.setattr(rewards, "RewardPool", Recording)
    assert main(["score", str(write_jsonl(tmp_path / "c.jsonl", ROWS[:1])), "--workers", "1", "--timeout", "10"]) == 0
    # and each row killed at its timeout has its worker replaced (1.4-1.6 s with sympy): 60 s of slack was
    # short of 256 replacements, and a fast row behind them scored 0 as "batch deadline passed"
    assert given[0].batch_deadline_s >= CHUNK * (10 + 1.6)


def test_rows_past_the_first_chunk_keep_their_own_results(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(score, "CHUNK", 2)  # 5 rows: chunks of 2, 2 and 1
    right = [True, False, False, True, True]
    rows = [{"id": i, "completion": f"<think> t </think> <answer> {i if ok else 99} </answer>", "answer": str(i),
             "task": "arithmetic"} for i, ok in enumerate(right)]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    assert main(["score", str(path), "--timeout", "5", "--workers", "1"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["id"] for row in out] == [0, 1, 2, 3, 4]
    assert [row["rewards"]["accuracy"] for row in out] == [1.0, 0.0, 0.0, 1.0, 1.0]


def fake_pool(monkeypatch, score_batch):
    """rl.cli.score's RewardPool (imported when it runs) replaced by one whose results are `score_batch(items)`;
    returns the list of each exit's exception type (None for a normal exit)."""
    closed = []

    class Pool:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            closed.append(exc[0])
            return False

        def score_batch(self, items):
            return score_batch(items)

    monkeypatch.setattr(rewards_module, "RewardPool", Pool)
    return closed


def test_a_failed_rows_error_is_printed(tmp_path, capsys, monkeypatch):
    fake_pool(monkeypatch, lambda items: [ScoreResult({"accuracy": 0.0, "format": 0.0}, 0.0, "error", "ValueError: boom")
                                          for _ in items])
    path = write_jsonl(tmp_path / "c.jsonl", [{"completion": "<answer> 7 </answer>", "answer": "7"}])
    assert main(["score", str(path)]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["status"] == "error" and row["error"] == "ValueError: boom"


def test_sigterm_stops_scoring_as_ctrl_c_does_keeping_the_rows_printed(tmp_path, capsys, monkeypatch):
    """A job's SIGTERM killed score outright (exit -15), its workers left to the resource tracker's "leaked
    semaphore objects" warnings; now the pool closes, one line says so, exit 143, the rows printed stay."""
    import os
    import signal

    def stopped(items):
        if items[0].reference == "2":  # the second chunk: the job's time is up
            os.kill(os.getpid(), signal.SIGTERM)
        return [ScoreResult({"accuracy": 1.0}, 1.0, "ok", None) for _ in items]

    def unhandled(signum, frame):  # stands in for the default action (ending the test process) on the old code
        raise RuntimeError("SIGTERM not handled by score")

    closed = fake_pool(monkeypatch, stopped)
    monkeypatch.setattr(score, "CHUNK", 1)
    path = write_jsonl(tmp_path / "c.jsonl", [{"completion": "x", "answer": str(i)} for i in (1, 2, 3)])
    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        code = main(["score", str(path), "--rewards", "accuracy"])
        assert signal.getsignal(signal.SIGTERM) is unhandled  # put back
    finally:
        signal.signal(signal.SIGTERM, previous)
    out = capsys.readouterr()
    assert code == 128 + signal.SIGTERM and closed and closed[0] is not None
    assert [json.loads(line)["answer"] for line in out.out.splitlines()] == ["1"]
    assert out.err.strip() == "r1jax score: interrupted (SIGTERM)"


def test_rows_a_reward_can_only_score_zero_are_counted_on_stderr(tmp_path, capsys, monkeypatch):
    """Maths rows scored with --rewards code (the wrong file) each printed code 0, and nothing said why."""
    fake_pool(monkeypatch, lambda items: [ScoreResult({}, 0.0, "ok", None) for _ in items])  # (what is said
    # before scoring matters here, not the rows' rewards)
    code_row = {"task": "code", "completion": "x", "tests": ["assert f(1) == 2"]}
    maths = write_jsonl(tmp_path / "maths.jsonl", [{"completion": "7", "answer": str(i)} for i in range(3)])
    assert main(["score", str(maths), "--rewards", "code"]) == 0
    assert capsys.readouterr().err == ("r1jax score: 3 of 3 rows hold no tests (not task code): the code reward "
                                       "scores them 0\n")
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [code_row, {"completion": "7", "answer": "7"}])
    assert main(["score", str(mixed), "--rewards", "accuracy,format"]) == 0
    assert capsys.readouterr().err == ("r1jax score: 1 of 2 rows are code rows: the accuracy reward scores them 0 "
                                       "(the code reward runs their tests)\n")
    assert main(["score", str(maths), "--rewards", "accuracy,format"]) == 0  # each reward can score each row
    assert main(["score", str(write_jsonl(tmp_path / "code.jsonl", [code_row])), "--rewards", "code,format"]) == 0
    assert capsys.readouterr().err == ""


def test_a_sandbox_refusal_names_score_s_flag_not_a_config_field(tmp_path, capsys, monkeypatch):
    """Without bwrap the advice was "set rewards.code.sandbox=rlimits_only", a config field score does not take."""
    from r1jax.rl.rewards import sandbox

    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    sandbox.check_sandbox.cache_clear()
    path = write_jsonl(tmp_path / "c.jsonl", [{"task": "code", "completion": "x", "tests": ["assert f(1) == 2"],
                                                      "entry_point": "f"}])
    try:
        assert main(["score", str(path), "--rewards", "code"]) == 2
    finally:
        sandbox.check_sandbox.cache_clear()
    err = capsys.readouterr().err
    assert "`bwrap` is not installed (apt-get install bubblewrap); or pass --sandbox rlimits_only to accept" in err
    assert "rewards.code.sandbox" not in err
