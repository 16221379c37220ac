"""User data validation and grain pipelines: seed shuffle, process shards, repeat, exact iterator state."""

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from r1jax.errors import UserError
from r1jax.rl.data import DataConfig, TaskSource, build_source, load_problems, make_dataset, make_iterator
from r1jax.rl.tasks import get_task

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_user_jsonl_and_parquet_load_as_problems(tmp_path):
    rows = [{"prompt": "1+1?", "answer": "2"}, {"prompt": "Solve 2x=4", "answer": 2, "task": "algebra",
                                                 "solution": "<think> x=2 </think> <answer> 2 </answer>"}]
    expected = [{"task": "math", "prompt": "1+1?", "answer": "2", "solution": "", "difficulty": 0},
                {"task": "algebra", "prompt": "Solve 2x=4", "answer": "2",
                 "solution": "<think> x=2 </think> <answer> 2 </answer>", "difficulty": 0}]
    assert load_problems(write_jsonl(tmp_path / "d.jsonl", rows[:1] + [""] + rows[1:])) == expected
    columns = {"task": None, "solution": None}  # Parquet nulls read as absent fields
    pq.write_table(pa.Table.from_pylist([{**columns, **r, "answer": str(r["answer"])} for r in rows]),
                   tmp_path / "d.parquet")
    assert load_problems(tmp_path / "d.parquet") == expected


@pytest.mark.parametrize("bad_row,message", [
    ({"answer": "2"}, r"row 2: field 'prompt' is missing"),
    ({"prompt": "q"}, r"row 2: field 'answer' is missing"),
    # another dataset's column names (GSM8K's): the row's columns and the mapping that reads them are named
    ({"question": "q", "answer": "2"}, r"row 2: field 'prompt' is missing \(the row's columns: 'question', "
                                       r"'answer'; data.fields.prompt names the column that holds it\)$"),
    ({"prompt": None, "answer": "2"}, r"row 2: field 'prompt' is missing$"),  # a null: the column is there
    ({"prompt": "q", "answer": "  "}, r"row 2: field 'answer' is empty"),
    ({"prompt": ["q"], "answer": "2"}, r"row 2: field 'prompt' must be a string, got list"),
    ({"prompt": "q", "answer": True}, r"row 2: field 'answer' must be a string, got bool"),
    ({"prompt": "q", "answer": "2", "task": "chess"}, r"row 2: field 'task' = 'chess' is not a known task"),
    ({"prompt": "q", "answer": "2", "solution": 3}, r"row 2: field 'solution' must be a string"),
    ("{not json", r"row 2: not valid JSON"), ("[1, 2]", r"row 2: expected a JSON object, got list"),
    ("[" * 100_000 + "]" * 100_000, r"row 2: not valid JSON \(nested too deeply\)"),  # a RecursionError before
    pytest.param('{"prompt": "q", "answer": ' + "9" * 5000 + "}", r"row 2: not readable JSON \(Exceeds the limit",
                 id="5000-digit-integer"),  # a ValueError traceback before
    ('{"prompt": "a\\ud800b", "answer": "1"}', r"row 2: field 'prompt' is not valid Unicode \(a lone surrogate at "
                                                r"character 1\)"),  # sentencepiece's RuntimeError in preflight
])
def test_a_bad_jsonl_row_names_file_row_and_field(tmp_path, bad_row, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok", "answer": "1"}, bad_row])
    with pytest.raises(UserError, match=f"bad.jsonl: {message}"):
        load_problems(path)


@pytest.mark.parametrize("answer,shown", [("NaN", "nan"), ("Infinity", "inf"), ("-Infinity", "-inf"),
                                          ("1e400", "inf")])
def test_a_non_finite_number_is_no_answer(tmp_path, answer, shown):
    """JSON's NaN and Infinity (and 1e400, which Python reads as inf) became the reference answers "nan" and
    "inf"; a finite float is still an answer."""
    path = write_jsonl(tmp_path / "bad.jsonl", ['{"prompt": "q", "answer": 4.5}',
                                                 f'{{"prompt": "q", "answer": {answer}}}'])
    with pytest.raises(UserError, match=f"bad.jsonl: row 2: field 'answer' is {shown}, not a finite number"):
        load_problems(path)
    pq.write_table(pa.table({"prompt": ["a", "b"], "answer": [1.5, float(shown)]}), tmp_path / "bad.parquet")
    with pytest.raises(UserError, match=f"bad.parquet: row 2: field 'answer' is {shown}, not a finite number"):
        load_problems(tmp_path / "bad.parquet")
    assert load_problems(write_jsonl(tmp_path / "ok.jsonl", ['{"prompt": "q", "answer": 4.5}']))[0]["answer"] == "4.5"


def test_a_math_reference_the_verifier_refuses_is_named_at_load(tmp_path):
    """A reference the math screen refuses never scores: every answer to its row got 0 for the whole run."""
    path = write_jsonl(tmp_path / "m.jsonl", [json.dumps({"prompt": "q", "answer": r"\binom{n+k}{k}"}),
                                               json.dumps({"prompt": "q", "answer": r"\sum_{i=1}^{n} i"})])
    with pytest.raises(UserError, match=r"m.jsonl: row 2: field 'answer': the math verifier refuses this "
                                        r"reference \(\\sum"):
        load_problems(path)
    assert load_problems(write_jsonl(tmp_path / "ok.jsonl", [json.dumps({"prompt": "q", "answer": "(n-k)!"})]))


def test_bad_parquet_rows_and_files_are_user_errors(tmp_path):
    pq.write_table(pa.Table.from_pylist([{"prompt": "a", "answer": "1"}, {"prompt": None, "answer": "2"}]),
                   tmp_path / "d.parquet")
    with pytest.raises(UserError, match=r"d.parquet: row 2: field 'prompt' is missing"):
        load_problems(tmp_path / "d.parquet")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(UserError, match="junk.parquet: cannot read Parquet"):
        load_problems(tmp_path / "junk.parquet")
    with pytest.raises(UserError, match="does not exist"):
        load_problems(tmp_path / "missing.jsonl")
    with pytest.raises(UserError, match="expected one of"):
        load_problems(write_jsonl(tmp_path / "d.csv", ["a,b"]))


def test_sft_data_needs_solutions_and_unreadable_files_are_named(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "answer": "1", "solution": "s"},
                                              {"prompt": "b", "answer": "2"}])
    assert [p["solution"] for p in load_problems(path)] == ["s", ""]
    with pytest.raises(UserError, match=r"d.jsonl: row 2: field 'solution' is missing"):
        load_problems(path, need_solution=True)
    (tmp_path / "latin1.jsonl").write_bytes(b'{"prompt": "a", "answer": "1"}\n{"prompt": "caf\xe9", "answer": "1"}\n')
    with pytest.raises(UserError, match=r"latin1.jsonl: row 2: not UTF-8 text"):
        load_problems(tmp_path / "latin1.jsonl")
    # a byte-order mark first (Windows editors write one): read past; refused before ("Unexpected UTF-8 BOM")
    (tmp_path / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"prompt": "a", "answer": "1"}\n{"prompt": "b", "answer": "2"}\n')
    assert [p["prompt"] for p in load_problems(tmp_path / "bom.jsonl")] == ["a", "b"]
    (tmp_path / "bom2.jsonl").write_bytes(b'{"prompt": "a", "answer": "1"}\n\xef\xbb\xbf{"prompt": "b", "answer": "2"}\n')
    with pytest.raises(UserError, match=r"bom2.jsonl: row 2: not valid JSON"):  # only the file's first bytes
        load_problems(tmp_path / "bom2.jsonl")
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(UserError, match=r"dir.jsonl' is not a file"):
        load_problems(tmp_path / "dir.jsonl")


def test_data_config_validates_fields():
    with pytest.raises(UserError, match="data.tasks: unknown task 'chess'"):
        DataConfig(tasks=("chess",))
    with pytest.raises(UserError, match="data.difficulty"):
        DataConfig(difficulty=0)
    with pytest.raises(UserError, match="data.num_problems"):
        DataConfig(num_problems=0)
    with pytest.raises(UserError, match="data.task_knobs.countdown: 'countdown' is not in data.tasks"):
        DataConfig(tasks=("algebra",), task_knobs={"countdown": {"distractors": 1}})
    with pytest.raises(UserError, match="data.task_knobs.algebra: .*unknown knob.*'digits'"):
        DataConfig(tasks=("algebra",), task_knobs={"algebra": {"digits": 2}})


def test_task_knobs_reach_the_training_source_and_the_held_out_set():
    from r1jax.rl.evaluate import held_out_problems
    from r1jax.rl.train.config import EvalConfig

    data = DataConfig(tasks=("algebra",), difficulty=1, task_knobs={"algebra": {"constant": 40}}, num_problems=50)
    train = build_source(data)
    assert [train[i] for i in range(50)] == [get_task("algebra", 1, constant=40).generate(0, i).to_dict()
                                           for i in range(50)]
    held_out = held_out_problems(data, EvalConfig(num_problems=20))
    expected = get_task("algebra", 1, constant=40)
    assert {p["prompt"] for p in held_out} <= {expected.generate(EvalConfig().seed, i).prompt for i in range(100)}
    assert not {p["prompt"] for p in held_out} & {train[i]["prompt"] for i in range(50)}


def source(n=40):
    return list(range(n))


def collect(dataset, batches):
    it = iter(dataset)
    return [next(it) for _ in range(batches)]


def test_shuffle_is_a_function_of_the_seed():
    a = collect(make_dataset(source(), batch_size=4, seed=1, process_index=0, process_count=1), 10)
    b = collect(make_dataset(source(), batch_size=4, seed=1, process_index=0, process_count=1), 10)
    c = collect(make_dataset(source(), batch_size=4, seed=2, process_index=0, process_count=1), 10)
    assert a == b != c
    assert sorted(x for batch in a for x in batch) == source()  # one epoch, each item once
    unshuffled = collect(make_dataset(source(), batch_size=4, shuffle=False, process_index=0, process_count=1), 2)
    assert unshuffled == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_process_shards_are_disjoint_cover_the_data_and_reshuffle_each_epoch():
    epochs = {}
    for index in range(4):
        batches = collect(make_dataset(source(), batch_size=5, seed=3, process_index=index, process_count=4), 4)
        assert all(len(b) == 5 for b in batches)
        epochs[index] = (batches[0] + batches[1], batches[2] + batches[3])  # 10 items per process per epoch
    for epoch in (0, 1):
        seen = [x for index in range(4) for x in epochs[index][epoch]]
        assert sorted(seen) == source()
    assert epochs[0][0] != epochs[0][1]  # a new order in the second epoch


def test_uneven_shards_stay_disjoint_across_epochs():
    """10 problems on 3 processes: each takes 3 per epoch (one goes), so their epochs turn together and each
    epoch's 9 rows are distinct; with shards of 4, 3, 3 the epochs drifted apart and a batch held a row twice."""
    streams = [collect(make_dataset(source(10), batch_size=3, seed=3, process_index=index, process_count=3), 6)
               for index in range(3)]
    epochs = [[x for batch in batches for x in batch] for batches in zip(*streams)]
    assert all(len(set(rows)) == len(rows) == 9 for rows in epochs), epochs
    assert len({tuple(rows) for rows in epochs}) == 6  # reshuffled each epoch


def test_without_repeat_the_iterator_ends_and_small_sources_fail_clearly():
    once = make_dataset(source(12), batch_size=4, repeat=False, process_index=0, process_count=1)
    assert len(collect(once, 3)) == 3
    with pytest.raises(StopIteration):
        collect(make_dataset(source(12), batch_size=4, repeat=False, process_index=0, process_count=1), 4)
    with pytest.raises(UserError, match="cannot fill a batch"):
        make_dataset(source(6), batch_size=4, process_index=0, process_count=2)
    with pytest.raises(UserError, match="process index 2"):
        make_dataset(source(), batch_size=4, process_index=2, process_count=2)


def test_task_source_mixes_tasks_by_index_and_builds_from_config(tmp_path):
    tasks = [get_task("arithmetic"), get_task("countdown")]
    src = TaskSource(tasks, seed=4, size=10)
    assert [src[i]["task"] for i in range(4)] == ["arithmetic", "countdown"] * 2
    assert src[3] == tasks[1].generate(4, 1).to_dict()
    with pytest.raises(IndexError):
        src[10]
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "q", "answer": "1"}])
    assert build_source(DataConfig(path=str(path))) == load_problems(path)
    assert len(build_source(DataConfig(tasks=("algebra",), num_problems=7))) == 7


RESTORE = """
import json, sys
from r1jax.rl.data import DataConfig, make_iterator
it = make_iterator(DataConfig(tasks=("arithmetic", "countdown"), seed=9), 3, process_index=1, process_count=2)
it.set_state(json.loads(sys.argv[1]))
print(json.dumps([next(it) for _ in range(3)]))
"""


def test_iterator_state_restores_exactly_in_a_fresh_process():
    config = DataConfig(tasks=("arithmetic", "countdown"), seed=9)
    it = make_iterator(config, 3, process_index=1, process_count=2)
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
    expected = [next(it) for _ in range(3)]
    out = subprocess.run([sys.executable, "-c", RESTORE, json.dumps(state)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == expected
    fresh = make_iterator(config, 3, process_index=1, process_count=2)
    fresh.set_state(state)
    assert [next(fresh) for _ in range(3)] == expected


def test_held_out_countdown_problems_are_not_training_problems_reordered():
    """Countdown shows its numbers shuffled, so one problem has several prompts: held out by prompt alone,
    most held-out problems were training problems with their numbers in another order. Checked here by
    (target, sorted numbers), computed from the prompts independently of the task's own key."""
    import re

    from r1jax.rl.evaluate import held_out_problems
    from r1jax.rl.train.config import EvalConfig

    def problem(prompt):
        target, numbers = re.match(r"Make (\d+) from ([\d, ]+) \(", prompt).groups()
        return int(target), sorted(int(n) for n in numbers.split(", "))

    data = DataConfig(tasks=("countdown",), num_problems=3000)
    train = build_source(data)
    trained = {tuple(map(str, problem(train[i]["prompt"]))) for i in range(len(train))}
    held_out = held_out_problems(data, EvalConfig(num_problems=50))
    assert len(held_out) == 50
    assert not {tuple(map(str, problem(p["prompt"]))) for p in held_out} & trained


def _algebra_problem(prompt):
    """An algebra problem however its prompt orders it, computed here independently of the task's own key:
    Expand's factors and Simplify's x terms and constants as sorted lists."""
    import re

    kind, body = prompt.split(" ", 1)
    if kind == "Expand":
        return kind, tuple(sorted(re.fullmatch(r"\((.*)\)\((.*)\)", body).groups()))
    if kind == "Simplify":
        terms = [t if t[0] in "+-" else "+" + t for t in re.findall(r"[+-]?\d*x?", body) if t]
        return (kind, tuple(sorted(t.replace("+x", "+1x").replace("-x", "-1x") for t in terms if "x" in t)),
                tuple(sorted(int(t) for t in terms if "x" not in t)))
    return kind, body


def test_held_out_algebra_keeps_the_kinds_mix_and_skips_reordered_training_problems():
    """Held out by prompt alone, level 3's set (100,000 training problems) was 199 Simplify, 1 Solve, no Expand,
    and 41 of the Simplify problems were training problems with their terms swapped. The held-out set now has
    the kinds the held-out seed draws, in its order, and none of them is a training problem reordered."""
    from r1jax.rl.evaluate import held_out_problems
    from r1jax.rl.train.config import EvalConfig

    data, evaluation = DataConfig(tasks=("algebra",), difficulty=3, num_problems=600), EvalConfig(num_problems=60)
    train = build_source(data)
    trained = {_algebra_problem(train[i]["prompt"]) for i in range(len(train))}
    held_out = held_out_problems(data, evaluation)
    drawn = [get_task("algebra", 3).generate(evaluation.seed, i).prompt.split()[0] for i in range(60)]
    assert [p["prompt"].split()[0] for p in held_out] == drawn
    problems = [_algebra_problem(p["prompt"]) for p in held_out]
    assert len(set(problems)) == 60 and not set(problems) & trained


def test_a_kind_training_used_up_is_left_out_of_the_held_out_set_and_named():
    """Expand with coefficients in [-2, 2] has few problems, all in a large training set: the held-out set
    skips Expand's turns (keeping the other kinds' order) and names it, where skipping seen problems alone
    silently filled the set with the other kinds."""
    from r1jax.rl.evaluate import held_out_problems
    from r1jax.rl.train.config import EvalConfig

    data = DataConfig(tasks=("algebra",), difficulty=3, num_problems=400,
                      task_knobs={"algebra": {"kinds": "linear,expand", "coef": 2, "constant": 40}})
    left_out = []
    held_out = held_out_problems(data, EvalConfig(num_problems=20), left_out=left_out)
    assert left_out == ["algebra's Expand"]
    assert len(held_out) == 20 and all(p["prompt"].startswith("Solve") for p in held_out)
    train = build_source(data)
    assert not {p["prompt"] for p in held_out} & {train[i]["prompt"] for i in range(len(train))}


def test_held_out_problems_of_one_kind_are_the_first_unseen_in_order():
    """The default run's set (configs/tiny.yaml: algebra difficulty 1, Solve only; 1500 training problems) is the
    first 200 problems of the eval seed whose prompts training does not have, as before kinds were kept."""
    from r1jax.rl.evaluate import held_out_problems
    from r1jax.rl.train.config import EvalConfig

    data, evaluation = DataConfig(tasks=("algebra",), difficulty=1, num_problems=1500), EvalConfig()
    task = get_task("algebra", 1)
    seen, expected = {task.generate(data.seed, i).prompt for i in range(1500)}, []
    for index in range(10_000):
        problem = task.generate(evaluation.seed, index).to_dict()
        if problem["prompt"] not in seen:
            seen.add(problem["prompt"])
            expected.append(problem)
        if len(expected) == evaluation.num_problems:
            break
    assert held_out_problems(data, evaluation) == expected


def test_held_out_problems_skip_the_rows_of_a_training_file(tmp_path):
    """Training on a file drawn from the generators' space: every held-out prompt was a row of it (20 of 20),
    as the held-out set was compared with generated training problems only. A row's task column does not hide
    it: a prompt the held-out task generates is its problem whatever verifier the file names (`math` here)."""
    import dataclasses

    from r1jax.rl.evaluate import held_out_problems
    from r1jax.rl.train.config import EvalConfig

    data, evaluation = DataConfig(tasks=("arithmetic",), difficulty=2, num_problems=100), EvalConfig(num_problems=20)
    first = held_out_problems(data, evaluation)
    rows = [{"prompt": p["prompt"], "answer": p["answer"], "task": "arithmetic"} for p in first[:10]]
    rows += [{"prompt": p["prompt"], "answer": p["answer"]} for p in first[10:]]  # read as task `math`
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    held_out = held_out_problems(dataclasses.replace(data, path=str(path)), evaluation)
    assert len(held_out) == 20 and not {p["prompt"] for p in held_out} & {r["prompt"] for r in rows}
    with pytest.raises(UserError, match="data.path='missing.jsonl' .a training file.* does not exist"):
        held_out_problems(dataclasses.replace(data, path="missing.jsonl"), evaluation)


def test_a_file_is_parsed_once_while_unchanged_and_each_reader_gets_its_own_rows(tmp_path, monkeypatch):
    """A run's start-up reads its data file several times (preflight, data pipeline, held-out check): parsed
    once while its bytes are unchanged, read again when rewritten (here within the same size, as an edit
    inside the file system's clock tick would be). The pipeline's fingerprint is the SHA-256 of the rows' lines
    (line endings aside), as before: a run made before resumes on it."""
    import hashlib

    from r1jax.rl.data import records
    from r1jax.rl.data.pipeline import read_source

    reads, read_rows = [], records.read_rows
    monkeypatch.setattr(records, "read_rows", lambda path, digest=None: reads.append(path) or read_rows(path, digest))
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"question": "1+1?", "answer": "#### 2"}\r\n\n{"question": "2+2?", "answer": "#### 4"}\n')
    config = DataConfig(path=str(path), fields={"prompt": "question"}, answer_format="gsm8k")
    first = config.load_file()
    first[0]["prompt"] = "changed by its reader"
    problems, fingerprint = read_source(config)
    assert len(reads) == 1 and [p["prompt"] for p in problems] == ["1+1?", "2+2?"]
    lines = b'{"question": "1+1?", "answer": "#### 2"}\n{"question": "2+2?", "answer": "#### 4"}\n'
    assert fingerprint["sha256"] == hashlib.sha256(lines).hexdigest()
    assert load_problems(path, fields={"prompt": "question"})[0]["answer"] == "#### 2"  # read another way
    assert len(reads) == 2
    path.write_bytes(path.read_bytes().replace(b"#### 4", b"#### 5"))
    problems, changed = read_source(config)
    assert len(reads) == 3 and problems[1]["answer"] == "5" and changed["sha256"] != fingerprint["sha256"]



def test_a_corpus_path_that_is_a_directory_or_missing_is_named(tmp_path):
    """`data.path` (no data-file suffix) read as a tokenizer's text corpus: an IsADirectoryError traceback."""
    from r1jax.rl.data import file_corpus

    (tmp_path / "adir").mkdir()
    for name, said in (("adir", "is not a file"), ("missing", "does not exist")):
        with pytest.raises(UserError, match=f"data file '{tmp_path / name}' {said}"):
            list(file_corpus(tmp_path / name))


def test_the_default_data_config_leaves_a_held_out_set():
    # at difficulty 1 (the default until 2026-12-05) the default 100,000 training problems used up arithmetic's
    # few hundred: a config stating only a model was refused by the held-out check before training
    from r1jax.rl.evaluate import held_out_problems
    from r1jax.rl.train.config import EvalConfig

    assert len(held_out_problems(DataConfig(), EvalConfig())) == EvalConfig().num_problems == 200
