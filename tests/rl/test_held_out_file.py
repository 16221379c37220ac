"""`eval.path`: a held-out file (e.g. GSM8K's test split) in place of generated held-out problems. Before it, a
run trained on a data file was evaluated on generated `data.tasks` problems only, never on its dataset's own
test split. Its rows that training reads are skipped; the rest are taken in the file's order, through data's
field mapping unless `eval.fields` / `eval.answer_format` say otherwise; the trainer's preflight returns them."""

import dataclasses
import json

import pytest

from r1jax.errors import UserError
from r1jax.rl.config import load_config
from r1jax.rl.data import DataConfig, build_tokenizer
from r1jax.rl.evaluate import held_out_file_note, held_out_problems
from r1jax.rl.train.config import EvalConfig
from r1jax.rl.train.preflight import preflight
from r1jax.sharding.mesh import build_mesh

from tests.rl.conftest import TRAIN_CONFIG


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def gsm8k_rows(numbers):
    """GSM8K's columns: question, answer (reasoning, then `#### N`)."""
    return [{"question": f"Tom has {n} apples and buys {n} more. How many now?",
             "answer": f"He has {n} + {n} = {2 * n}.\n#### {2 * n:,}"} for n in numbers]


def test_the_held_out_file_gives_its_rows_training_never_reads_in_order(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", gsm8k_rows(range(1, 6)))
    test = write_jsonl(tmp_path / "test.jsonl", gsm8k_rows([3, 1000, 7, 1, 8, 9]))  # 3 and 1 are training rows
    data = DataConfig(path=train, fields={"prompt": "question"}, answer_format="gsm8k")
    held_out = held_out_problems(data, EvalConfig(num_problems=3, path=test))
    assert [p["answer"] for p in held_out] == ["2000", "14", "16"]  # gsm8k's format: commas gone
    assert held_out[0]["prompt"] == "Tom has 1000 apples and buys 1000 more. How many now?"
    assert held_out[0]["task"] == "math" and held_out[0]["solution"] == \
        "<think> He has 1000 + 1000 = 2000. </think> <answer> 2000 </answer>"
    everything = held_out_problems(data, EvalConfig(num_problems=100, path=test))  # fewer rows: all unseen ones
    assert [p["answer"] for p in everything] == ["2000", "14", "16", "18"]
    # the run's line says when the file gave fewer than asked
    assert held_out_file_note(EvalConfig(num_problems=100, path=test), len(everything)) == (
        f"held-out set: 4 rows of eval.path {test} (all it holds that training does not read: fewer than "
        "eval.num_problems=100)")
    assert held_out_file_note(EvalConfig(num_problems=3, path=test), len(held_out)).endswith(
        "(its first that training does not read)")
    # the training rows may also come from an SFT stage's file: theirs are skipped too
    sft = dataclasses.replace(data, path=write_jsonl(tmp_path / "sft.jsonl", gsm8k_rows([1000])))
    assert [p["answer"] for p in held_out_problems(data, EvalConfig(num_problems=2, path=test),
                                                   other_files=[("stages[cold].data_path", sft)])] == ["14", "16"]


def test_the_held_out_file_has_its_own_mapping_when_it_says_so(tmp_path):
    # trained on a file in r1jax's own columns; evaluated on a MATH-style file (problem, boxed solution)
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "What is 2+2?", "answer": "4"}])
    test = write_jsonl(tmp_path / "test.jsonl", [
        {"problem": "What is 2+2?", "solution": "So \\boxed{4}."},  # a training prompt: skipped
        {"problem": "Simplify $\\frac{6}{8}$.", "solution": "Divide by 2: \\boxed{\\frac{3}{4}}."}])
    cfg = EvalConfig(path=test, fields={"prompt": "problem", "answer": "solution"}, answer_format="boxed")
    held_out = held_out_problems(DataConfig(path=train), cfg)
    assert [(p["prompt"], p["answer"]) for p in held_out] == [("Simplify $\\frac{6}{8}$.", "\\frac{3}{4}")]
    # without its own mapping the file is read with data's (r1jax's own columns): its rows lack `prompt`
    with pytest.raises(UserError, match=r"eval.path='.*test.jsonl' \(the held-out file\): .*row 1.*prompt"):
        held_out_problems(DataConfig(path=train), EvalConfig(path=test))


def test_a_held_out_file_that_is_all_training_rows_or_missing_is_named(tmp_path):
    rows = gsm8k_rows([1, 2])
    train, test = write_jsonl(tmp_path / "train.jsonl", rows), write_jsonl(tmp_path / "test.jsonl", rows[::-1])
    data = DataConfig(path=train, fields={"prompt": "question"}, answer_format="gsm8k")
    with pytest.raises(UserError, match="every one of its 2 rows is a problem training reads"):
        held_out_problems(data, EvalConfig(path=test))
    with pytest.raises(UserError, match=r"eval.path='nope.jsonl' \(the held-out file\): .*does not exist"):
        held_out_problems(data, EvalConfig(path="nope.jsonl"))
    with pytest.raises(UserError, match="holds no row of task countdown"):  # `r1jax eval --task countdown`
        held_out_problems(data, EvalConfig(path=test), tasks=["countdown"])


def test_a_held_out_file_skips_the_problems_training_generates(tmp_path):
    data = DataConfig(tasks=("arithmetic",), difficulty=1, num_problems=50)
    generated = held_out_problems(data, EvalConfig(num_problems=3))  # problems training never draws
    train = data.task("arithmetic")
    from r1jax.rl.data import TaskSource

    trained = TaskSource([train], data.seed, data.num_problems)
    rows = [{"prompt": trained[0]["prompt"], "answer": trained[0]["answer"], "task": "arithmetic"}]
    # without a task column a row is read as `math`: the same training prompt all the same (it leaked)
    rows += [{"prompt": trained[1]["prompt"], "answer": trained[1]["answer"]}]
    rows += [{"prompt": p["prompt"], "answer": p["answer"], "task": "arithmetic"} for p in generated]
    rows += rows[-1:]  # a repeated row is one problem (it counted twice)
    held_out = held_out_problems(data, EvalConfig(path=write_jsonl(tmp_path / "test.jsonl", rows)))
    assert [p["prompt"] for p in held_out] == [p["prompt"] for p in generated]


@pytest.mark.parametrize("overrides, named", [
    (["eval.fields={prompt: question}"], "eval.fields and eval.answer_format describe a held-out file"),
    (["eval.path=t.jsonl", "eval.difficulty=2"], "eval.difficulty=2 picks generated held-out problems"),
    (["eval.path=t.jsonl", "eval.answer_format=gsm"], "eval.answer_format='gsm': expected one of"),
    (["eval.path=t.jsonl", "eval.fields={question: prompt}"], "eval.fields.question: not a problem field"),
    (["eval.path=t.jsonl", "eval.fields={prompt: q, answer: q}"], "eval.fields.prompt and eval.fields.answer both "
                                                                  "name column 'q'"),
])
def test_bad_held_out_file_settings_are_named(overrides, named):
    with pytest.raises(UserError, match=named):
        load_config(TRAIN_CONFIG, overrides)


def test_the_trainer_evaluates_on_the_held_out_file(tmp_path):
    """preflight returns the held-out problems the trainer evaluates: the file's rows, not generated ones."""
    test = write_jsonl(tmp_path / "test.jsonl", [{"prompt": f"What is {n} + {n}?", "answer": str(2 * n)}
                                                 for n in range(1000, 1006)])
    config = load_config(TRAIN_CONFIG, [f"eval.path={test}", "eval.num_problems=4"])
    tokenizer = build_tokenizer(config.tokenizer, config.data)
    problems = preflight(config, tokenizer, build_mesh(config.sharding), config.sharding.logical_rules())
    assert [p["prompt"] for p in problems] == [f"What is {n} + {n}?" for n in range(1000, 1004)]
    assert {p["task"] for p in problems} == {"math"}  # data.default_task


def test_a_held_out_row_stating_a_training_problem_another_way_is_skipped(tmp_path):
    """Training rows are matched by the task's problem key, not the raw prompt: whitespace, or a countdown's
    numbers in another order, is the same problem."""
    train = write_jsonl(tmp_path / "train.jsonl", [
        {"prompt": "Tom has 3 apples  and buys 3 more.\n", "answer": "6"},
        {"prompt": "Make 16 from 2, 3, 5 (+-*/, each at most once)", "answer": "(3+5)*2", "task": "countdown"}])
    test = write_jsonl(tmp_path / "test.jsonl", [
        {"prompt": "Tom has 3 apples and buys 3 more.", "answer": "6"},
        {"prompt": "Make 16 from 5, 2, 3 (+-*/, each at most once)", "answer": "(3+5)*2", "task": "countdown"},
        {"prompt": "Tom has 4 apples and buys 4 more.", "answer": "8"}])
    held_out = held_out_problems(DataConfig(path=train), EvalConfig(num_problems=10, path=test))
    assert [p["answer"] for p in held_out] == ["8"]
