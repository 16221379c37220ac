"""Data rows and pipelines, cases the mutation rounds found untested: each test pins a behaviour a user sees
(the verifier a row gets, the worked solution it trains on, a refused row) against a hand-written answer."""

import json
import re

import grain
import pytest

from r1jax.errors import UserError
from r1jax.rl.data import DataConfig, TaskSource, load_problems, make_iterator, split_answer
from r1jax.rl.tasks import get_task


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_row_without_a_task_column_is_read_as_data_default_task(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Compute 2+3", "answer": "5"},
                                              {"prompt": "Solve 2x=4", "answer": "2", "task": "algebra"}])
    problems = DataConfig(path=str(path), default_task="arithmetic").load_file()
    assert [p["task"] for p in problems] == ["arithmetic", "algebra"]  # not math: arithmetic's verifier scores it
    assert [p["task"] for p in load_problems(path)] == ["math", "algebra"]  # the default default


def test_a_rows_own_solution_column_wins_over_the_solution_a_gsm8k_answer_derives(tmp_path):
    rows = [{"question": "q1", "answer": "1+1=2\n#### 2", "solution": "<think> own </think> <answer> 2 </answer>"},
            {"question": "q2", "answer": "2+2=4\n#### 4"}]
    path = write_jsonl(tmp_path / "g.jsonl", rows)
    problems = DataConfig(path=str(path), fields={"prompt": "question"}, answer_format="gsm8k").load_file()
    assert [(p["answer"], p["solution"]) for p in problems] == [
        ("2", "<think> own </think> <answer> 2 </answer>"),
        ("4", "<think> 2+2=4 </think> <answer> 4 </answer>")]


def test_sft_data_needs_a_worked_solution_of_code_rows_too(tmp_path):
    row = {"prompt": "Write f(x) that returns x+1.", "task": "code", "tests": ["assert f(1) == 2"],
           "entry_point": "f"}
    path = write_jsonl(tmp_path / "c.jsonl", [row])
    assert load_problems(path)[0]["solution"] == ""  # RL data: no solution needed
    with pytest.raises(UserError, match=r"c.jsonl: row 1: field 'solution' is missing"):
        load_problems(path, need_solution=True)


@pytest.mark.parametrize("text,answer", [("so \\boxed{ 42 }.", "42"), ("\\boxed{\n\\frac{1}{2} }", "\\frac{1}{2}"),
                                         ("\\fbox{ x+1 }", "x+1")])
def test_a_boxed_answer_loses_the_spaces_inside_its_braces(text, answer):
    assert split_answer(text, "boxed")[0] == answer


@pytest.mark.parametrize("kwargs,message", [
    ({"tasks": ()}, "data.tasks is empty and data.path is not set: nothing to train on"),
    ({"default_task": "chess"}, "data.default_task: unknown task 'chess'"),
    ({"difficulty": 6}, r"data.difficulty = 6: expected 1..5"),
    ({"num_problems": 1_000_001}, r"data.num_problems = 1000001: expected in \[1, 1,000,000\]"),
    ({"seed": 2**32}, r"data.seed = 4294967296: expected an integer in \[0, 2\^32-1\]"),
    ({"fields": {"prompt": " "}}, r"data.fields.prompt=' ': expected a column name"),
])
def test_data_config_bounds_are_refused_with_the_setting_named(kwargs, message):
    with pytest.raises(UserError, match=message):
        DataConfig(**kwargs)


def test_data_config_bounds_themselves_are_accepted():
    DataConfig(difficulty=5, num_problems=1_000_000, seed=2**32 - 1)
    DataConfig(difficulty=1, num_problems=1, seed=0)
    assert DataConfig(tasks=(), path="d.jsonl").tasks == ()  # a file alone is something to train on


def test_a_task_source_has_no_negative_items():
    source = TaskSource([get_task("arithmetic")], seed=0, size=5)
    assert source[4] == get_task("arithmetic").generate(0, 4).to_dict()
    for index in (-1, 5):  # Python's negative indexing would hand out a problem of index -1, not one of the 5
        with pytest.raises(IndexError):
            source[index]


def test_a_task_listed_twice_is_refused_not_generated_twice():
    # (arithmetic, arithmetic, countdown) generated every arithmetic problem twice, side by side in a batch
    with pytest.raises(UserError, match=r"data.tasks lists 'arithmetic' more than once"):
        DataConfig(tasks=("arithmetic", "countdown", "arithmetic")).check_listed_once()  # before training
    source = TaskSource([get_task("arithmetic"), get_task("countdown")], seed=0, size=40)
    prompts = [source[i]["prompt"] for i in range(40)]
    assert len(set(prompts[0::2])) > 15 and all(p.startswith("Make") for p in prompts[1::2])


def test_a_task_listed_twice_beside_a_data_file_is_not_refused():
    # with data.path every stage reads the file, none generates from data.tasks: preflight refused such a run
    DataConfig(tasks=("arithmetic", "arithmetic"), path="rows.jsonl").check_listed_once()


@pytest.mark.parametrize("task,answer,message", [
    ("arithmetic", "twelve", "is not a number the arithmetic verifier reads"),
    ("arithmetic", "3+4", "is not a number the arithmetic verifier reads"),
    ("algebra", "x = ", "is not an answer in x the algebra verifier reads"),
    ("algebra", "y^2", "is not an answer in x the algebra verifier reads")])
def test_a_reference_the_tasks_verifier_never_reads_is_named_at_load(tmp_path, task, answer, message):
    # loaded silently before: every answer to the row scored 0 (and an unreadable answer to it stayed unreadable)
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "q", "answer": "7", "task": task},
                                              {"prompt": "q2", "answer": answer, "task": task}])
    expected = f"d.jsonl: row 2: field 'answer': the reference {answer!r} {message}"
    with pytest.raises(UserError, match=re.escape(expected)):
        load_problems(path)
    assert not get_task(task).verify(answer, answer)  # the verifier that would have scored it


def test_readable_arithmetic_and_algebra_references_load(tmp_path):
    rows = [("arithmetic", "-136"), ("arithmetic", "1,360"), ("algebra", "x^2-x-6"), ("algebra", "x = -7/3"),
            ("algebra", "(x+2)(x-3)")]
    path = write_jsonl(tmp_path / "ok.jsonl", [{"prompt": "q", "answer": a, "task": t} for t, a in rows])
    assert [p["answer"] for p in load_problems(path)] == [a for _, a in rows]
    assert all(get_task(t).verify(a, a) for t, a in rows)


@pytest.mark.parametrize("task,answer", [
    ("algebra", "(x+1)^100"), ("algebra", "2^x"), ("algebra", "x^(1/2)"), ("algebra", "x/0"), ("algebra", "1/0"),
    ("algebra", "(x+1)/0"), ("algebra", "1/(x-x)"), ("algebra", "0^-1"), ("algebra", "0^-1x"), ("algebra", "(x+2)(x-3)"), ("algebra", "x^1000"),
    ("algebra", "1\\,000x"), ("arithmetic", "1/0"), ("arithmetic", "-0.5"), ("arithmetic", "1\\,000")])
def test_a_reference_is_refused_exactly_when_it_cannot_score_against_itself(task, answer):
    # "(x+1)^100", "2^x" and "x/0" parsed, so they loaded, and every answer to them scored 0 (to_sympy's bounds,
    # a division by zero); the verifier itself is the reference: a reference that scores 1 for itself loads
    from r1jax.rl.tasks import algebra, arithmetic

    check = {"algebra": algebra.check_reference, "arithmetic": arithmetic.check_reference}[task]
    assert (check(answer) is None) == get_task(task).verify(answer, answer)


def test_data_seed_orders_a_files_rows(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"q{i}", "answer": str(i)} for i in range(40)])
    rows = load_problems(path)

    def first_batches(seed, shuffle=True):
        it = make_iterator(DataConfig(path=str(path), seed=seed, shuffle=shuffle), 10)
        return [p["prompt"] for _ in range(4) for p in next(it)]

    orders = {seed: first_batches(seed) for seed in (0, 1, 2)}
    for seed, order in orders.items():  # an epoch is a permutation, the one grain's shuffle of that seed makes
        assert sorted(order) == sorted(p["prompt"] for p in rows)
        assert order == [rows[i]["prompt"] for i in grain.MapDataset.range(40).shuffle(seed=seed)]
    assert len({tuple(order) for order in orders.values()}) == 3
    assert first_batches(5, shuffle=False) == [p["prompt"] for p in rows]
