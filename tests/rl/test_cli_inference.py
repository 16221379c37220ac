"""`r1jax generate` and `r1jax eval` on a trained checkpoint (the session's tiny run)."""

import json

import numpy as np
import pytest

from r1jax.rl.cli.main import main


def run_main(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_json_gives_ids_logprobs_and_text(capsys, finished_run):
    code, out, _ = run_main(capsys, "generate", str(finished_run), "--prompt", "Compute 12+34", "--samples", "3",
                            "--max-new-tokens", "5", "--temperature", "1.0", "--json", "--seed", "4")
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["sample"] for r in records] == [0, 1, 2]
    for r in records:
        assert 1 <= len(r["ids"]) <= 5 and len(r["logprobs"]) == len(r["ids"])
        assert all(lp <= 0 for lp in r["logprobs"]) and isinstance(r["text"], str)
    code, again, _ = run_main(capsys, "generate", str(finished_run), "--prompt", "Compute 12+34", "--samples",
                              "3", "--max-new-tokens", "5", "--temperature", "1.0", "--json", "--seed", "4")
    assert again == out  # same seed, same samples


def test_generate_greedy_from_ids_is_deterministic_and_bad_ids_are_named(capsys, finished_run):
    args = ("generate", str(finished_run), "--ids", "1,40,41,42", "--temperature", "0", "--max-new-tokens", "4",
            "--ignore-eos", "--json")
    _, first, _ = run_main(capsys, *args)
    _, second, _ = run_main(capsys, *args)
    record = json.loads(first)
    assert first == second and len(record["ids"]) == 4
    code, _, err = run_main(capsys, "generate", str(finished_run), "--ids", "1,99999")
    assert code == 2 and "99999" in err
    code, _, err = run_main(capsys, "generate", str(finished_run), "--ids", "1,x")
    assert code == 2 and "--ids" in err


def test_eval_json_reports_r1_protocol_figures(capsys, finished_run, tmp_path):
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Compute {a}+{a}", "answer": str(2 * a),
                                        "task": "arithmetic"}) + "\n" for a in range(10, 16)))
    code, out, _ = run_main(capsys, "eval", str(finished_run), "--data", str(data), "--samples", "2",
                            "--workers", "1", "--json")
    assert code == 0
    figures = json.loads(out)
    assert figures["n_problems"] == 6 and figures["k"] == 2
    assert {"pass@1", "cons@2", "pass@2", "format_rate", "response_length", "accuracy_by_difficulty"} <= set(figures)
    assert 0 <= figures["pass@1"] <= figures["pass@2"] <= 1
    code, _, err = run_main(capsys, "eval", str(finished_run), "--data", str(tmp_path / "missing.jsonl"))
    assert code == 2


def test_eval_with_a_held_out_set_too_large_for_the_task_space_exits_2(capsys, finished_run):
    code, _, err = run_main(capsys, "eval", str(finished_run), "--difficulty", "1", "--num-problems", "5000")
    assert code == 2 and "held-out" in err and len(err.strip().splitlines()) == 1
