"""Code problems in the data path: user rows (JSONL and Parquet, both test forms), the built-in generator whose
worked solutions pass their own tests in the sandbox, and a tiny training run that scores code rows."""

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from r1jax.errors import UserError
from r1jax.rl.config import load_config
from r1jax.rl.data.records import load_problems
from r1jax.rl.rewards import CodeConfig, ScoreItem
from r1jax.rl.rewards.code import code_outcome, parse_tests
from r1jax.rl.tasks import get_task
from r1jax.rl.train.trainer import Trainer

from tests.rl.conftest import TRAIN_CONFIG, metrics_rows

FAST = CodeConfig(wall_s=5.0, cpu_s=2, memory_mb=256)
ASSERT_ROW = {"task": "code", "prompt": "Write f(x) that doubles x.", "tests": ["assert f(2) == 4"],
              "entry_point": "f"}
STDIO_ROW = {"task": "code", "prompt": "Read n, print 2n.", "tests": [{"input": "3\n", "output": "6\n"}]}


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_code_rows_load_from_jsonl_and_parquet_with_both_test_forms(tmp_path):
    math_row = {"prompt": "1+1?", "answer": "2"}
    expected = [{"task": "math", "prompt": "1+1?", "answer": "2", "solution": "", "difficulty": 0},
                {"task": "code", "prompt": ASSERT_ROW["prompt"], "answer": "", "solution": "", "difficulty": 0,
                 "tests": '["assert f(2) == 4"]', "entry_point": "f"},
                {"task": "code", "prompt": STDIO_ROW["prompt"], "answer": "", "solution": "", "difficulty": 0,
                 "tests": '[{"input": "3\\n", "output": "6\\n"}]'}]
    assert load_problems(write_jsonl(tmp_path / "d.jsonl", [math_row, ASSERT_ROW, STDIO_ROW])) == expected
    pq.write_table(pa.Table.from_pylist([ASSERT_ROW]), tmp_path / "a.parquet")
    pq.write_table(pa.Table.from_pylist([STDIO_ROW]), tmp_path / "s.parquet")
    assert load_problems(tmp_path / "a.parquet") + load_problems(tmp_path / "s.parquet") == expected[1:]
    as_text = {**STDIO_ROW, "tests": json.dumps(STDIO_ROW["tests"])}  # a JSON string column reads the same
    assert load_problems(write_jsonl(tmp_path / "t.jsonl", [as_text])) == expected[2:]


@pytest.mark.parametrize("row,message", [
    ({"task": "code", "prompt": "p"}, r"row 1: field 'tests' is missing"),
    ({"task": "code", "prompt": "p", "tests": []},
     r"row 1: field 'tests' must be a non-empty list \(.*\), got an empty list$"),
    ({"task": "code", "prompt": "p", "tests": ["assert f(1)", {"input": "", "output": ""}]},
     r"row 1: field 'tests' mixes assertion strings and \{input, output\} objects \(one form per row\)$"),
    ({"task": "code", "prompt": "p", "tests": ["assert f(1) == 2", None]},  # blamed tests[0], a valid assertion
     r"row 1: tests\[1\] must be an assertion string, as the row's others are, got None$"),
    ({"task": "code", "prompt": "p", "tests": [3, "assert f(1) == 2"]}, r"row 1: tests\[0\] must be an assertion "
     r"string, as the row's others are, got 3$"),
    ({"task": "code", "prompt": "p", "tests": ["assert f(1) == 2", "assert f(2) =="]},  # would fail every program
     r"row 1: tests\[1\] is not valid Python \(SyntaxError: invalid syntax\): 'assert f\(2\) =='$"),
    ({"task": "code", "prompt": "p", "tests": ["assert f(1) == 2", "return f(2) == 3"]},  # parses, never compiles
     r"row 1: tests\[1\] is not valid Python \(SyntaxError: 'return' outside function\): 'return f\(2\) == 3'$"),
    ({"task": "code", "prompt": "p", "tests": '["assert f(1) == 2", "assert (f(2)"]'},  # the JSON-string form
     r"row 1: tests\[1\] is not valid Python \(SyntaxError: '\(' was never closed\)"),
    ({"task": "code", "prompt": "p", "tests": [{"input": "1"}]}, r"row 1: tests\[0\] must be"),
    ({"task": "code", "prompt": "p", "tests": [{"input": "1\n", "output": ""}, {"input": "2\n", "output": " \n\n"}]},
     r"row 1: every test's 'output' is blank, so a program that prints nothing passes them all"),
    ({"task": "code", "prompt": "p", "tests": ["assert max([1, 3]) == 3"], "entry_point": "max"},
     r"row 1: field 'entry_point' 'max' is a builtin's name: the tests would call the builtin"),
    ({"task": "code", "prompt": "p", "tests": "not json"}, r"row 1: field 'tests' is a string but not a JSON"),
    ({"task": "code", "prompt": "p", "tests": ["assert f(1)"], "entry_point": "f()"},
     r"row 1: field 'entry_point' must be a Python identifier"),
])
def test_a_bad_code_row_names_file_row_and_field(tmp_path, row, message):
    with pytest.raises(UserError, match=f"bad.jsonl: {message}"):
        load_problems(write_jsonl(tmp_path / "bad.jsonl", [row]))


HUMANEVAL_TEST = ("METADATA = {'author': 'jt'}\n\n\ndef check(candidate):\n    assert True, 'This prints if this "
                  "assert fails 1'\n    assert candidate(2) == 4\n")


@pytest.mark.parametrize("tests", [[HUMANEVAL_TEST], ["import math", "assert f(2) == 4"], ["def check(c): pass"],
                                   ["class T:\n    def check(self): assert f(2) == 4"],
                                   ["assert True, 'This prints if this assert fails 1'", "assert f(2) == 4"],
                                   ["async def check(candidate):\n    assert candidate(2) == 4\ncheck(candidate)"]])
def test_an_assertion_test_that_checks_nothing_is_refused_not_passed_by_every_program(tmp_path, tests):
    """HumanEval's test field defines check(candidate) and leaves the call to its harness: loaded as it was, a
    program `def f(x): return 0` scored 1 on it (and an import, or its `assert True, "This prints..."`, as a test
    gave every program a partial share)."""
    row = {"task": "code", "prompt": "p", "tests": tests, "entry_point": "f"}
    with pytest.raises(UserError, match=r"bad.jsonl: row 1: tests\[0\] checks nothing .* `check\(candidate\)`"):
        load_problems(write_jsonl(tmp_path / "bad.jsonl", [row]))
    runs = [HUMANEVAL_TEST + "check(candidate)", "import math\nassert math.isclose(f(2), 4)",
            "def h(x=f(2)):\n    return x\nassert h() == 4"]
    loaded = load_problems(write_jsonl(tmp_path / "ok.jsonl", [{**row, "tests": runs}, {
        **row, "tests": ["@f\ndef g(): pass", "for x in [2]:\n    assert f(x)", "if 1:\n    x = f(2)",
        "import asyncio\nasync def check(c):\n    assert c(2) == 4\nasyncio.run(check(f))"]}]))
    for program, passed in (("def f(x): return 0", 0), ("def f(x): return 2 * x", 3)):
        item = ScoreItem("p", f"```python\n{program}\n```", "", "code", tests=loaded[0]["tests"], entry_point="f")
        assert code_outcome(item, FAST).passed == passed, program


def test_a_test_calling_candidate_without_an_entry_point_is_refused_not_failed_by_every_program(tmp_path):
    """HumanEval's check(candidate) with no entry_point: `candidate` was never bound, so `def f(x): return 2 * x`
    scored 0 with every other program (a silently useless row). A test binding or taking its own `candidate`
    needs none."""
    row = {"task": "code", "prompt": "p", "tests": [HUMANEVAL_TEST + "check(candidate)"]}
    with pytest.raises(UserError, match=r"bad.jsonl: row 1: tests\[0\] calls `candidate`, which only the row's "
                                        r"'entry_point' binds"):
        load_problems(write_jsonl(tmp_path / "bad.jsonl", [row]))
    own = ["candidate = f\nassert candidate(2) == 4", "def check(candidate):\n    assert candidate(2) == 4\ncheck(f)"]
    (loaded, with_entry) = load_problems(write_jsonl(tmp_path / "ok.jsonl", [{**row, "tests": own},
                                                                              {**row, "entry_point": "f"}]))
    for problem, entry_point in ((loaded, None), (with_entry, "f")):
        item = ScoreItem("p", "```python\ndef f(x): return 2 * x\n```", "", "code", tests=problem["tests"],
                         entry_point=entry_point)
        assert code_outcome(item, FAST).status == "passed"


def test_a_test_naming_nothing_of_the_program_is_refused_not_passed_by_every_program(tmp_path):
    """Without entry_point, a function named like a builtin is the judge's builtin: `def max(xs): return 0` passed
    `assert max([1, 3]) == 3` (and a test naming only builtins gave every program a partial share)."""
    for tests, entry_point in ((["assert max([1, 3]) == 3"], None), (["assert f(1) == 2", "assert abs(-2) == 2"], "f")):
        row = {"task": "code", "prompt": "p", "tests": tests, "entry_point": entry_point}
        last = len(tests) - 1
        with pytest.raises(UserError, match=rf"bad.jsonl: row 1: tests\[{last}\] names nothing of the program"):
            load_problems(write_jsonl(tmp_path / "bad.jsonl", [row]))
    named = ["def check(solution):\n    assert solution(2) == 4\ncheck(solution)", "assert 'solution' in dir()",
             "import __main__\nassert __main__.solution(2) == 4", "assert eval('solution(2)') == 4"]
    loaded = load_problems(write_jsonl(tmp_path / "ok.jsonl", [{"task": "code", "prompt": "p", "tests": named}]))
    for program, passed in (("def solution(x): return 0", 1), ("def solution(x): return 2 * x", 4)):  # (dir())
        item = ScoreItem("p", f"```python\n{program}\n```", "", "code", tests=loaded[0]["tests"])
        assert code_outcome(item, FAST).passed == passed, program


UNITTEST = ("import unittest\nclass T(unittest.TestCase):\n    def test_f(self):\n        self.assertEqual(f(2), 4)\n"
            "unittest.main(argv=[''], exit=False)")


@pytest.mark.parametrize("test,message", [
    ("assert (f(2) == 4, 'f(2) is 4')", "asserts a tuple, which is always true"),
    ("def check(c):\n    assert (c(2) == 4, 'no')\ncheck(f)", "asserts a tuple, which is always true"),
    (UNITTEST, r"calls main\(exit=False\), whose failed tests raise nothing")])
def test_a_test_no_program_fails_is_refused(tmp_path, test, message):
    """`assert (f(2) == 4, 'msg')` is always true (a non-empty tuple), and unittest.main(exit=False) records a
    failure without raising it: `def f(x): return 0` scored 1 on either."""
    row = {"task": "code", "prompt": "p", "tests": ["assert f(1) == 2", test], "entry_point": "f"}
    with pytest.raises(UserError, match=rf"bad.jsonl: row 1: tests\[1\] {message}"):
        load_problems(write_jsonl(tmp_path / "bad.jsonl", [row]))


@pytest.mark.parametrize("level", [2, 3, 5])
def test_generated_worked_solutions_pass_their_tests_and_a_wrong_program_does_not(level):
    task = get_task("code", level)
    problems = [task.generate(seed=3, index=i) for i in range(6)]
    kinds = set()
    for problem in problems:
        kinds.add(parse_tests(json.loads(problem.tests), "generated")[0])
        solved = ScoreItem(problem.prompt, problem.solution, problem.answer, "code", tests=problem.tests,
                           entry_point=problem.entry_point)
        assert code_outcome(solved, FAST).status == "passed", problem
        wrong = solved.completion.replace("</answer>", "+1 </answer>") if problem.entry_point else \
            "<answer> print(0) </answer>"
        assert code_outcome(ScoreItem(problem.prompt, wrong, "", "code", tests=problem.tests,
                                      entry_point=problem.entry_point), FAST).status != "passed", problem
        assert not task.verify(problem.answer, problem.answer)  # only the sandbox judges programs
    assert kinds == {"assert", "stdio"}  # both forms from level 2 on
    assert len(problems[0].prompt) < 60


def test_code_rows_without_the_code_reward_are_refused(tmp_path):
    config = load_config(TRAIN_CONFIG, ["data.tasks=[code]", "eval.difficulty=5",
                                        "stages=[{name: grpo, kind: grpo, steps: 1}]"])
    with pytest.raises(UserError, match=r"code problems but rewards.names=\['accuracy', 'format'\] has no 'code'"
                                        r".*: add it, e.g. (rewards.names=\S+) (rewards.weights=\S+)$") as info:
        Trainer(config, tmp_path / "run").run()
    # the hint adds code to the run's rewards (it said [code,format], and a held-out set of math problems
    # then stopped the run for want of the accuracy reward it had dropped)
    hinted = load_config(TRAIN_CONFIG, re.search(r"e\.g\. (\S+) (\S+)$", str(info.value)).groups())
    assert hinted.rewards.names == ("accuracy", "format", "code")
    assert hinted.rewards.weights == (*config.rewards.weights, 1.0)


def test_a_tiny_run_on_code_tasks_scores_code_rows(tmp_path):
    config = load_config(TRAIN_CONFIG, [
        "data.tasks=[code]", "data.difficulty=2", "eval.difficulty=5", "eval.every=0",
        "rewards.names=[code,format]", "rewards.code.wall_s=5", "reward_pool.timeout_s=30",
        "stages=[{name: grpo, kind: grpo, steps: 1}]", "plots=false"])
    summary = Trainer(config, tmp_path / "run").run()
    assert summary["code_sandbox"].startswith("bwrap")
    grpo = [r for r in metrics_rows(tmp_path / "run") if r.get("stage") == "grpo" and "reward/code" in r]
    assert len(grpo) == 1
    statuses = {k: v for k, v in grpo[0].items() if k.startswith("code/")}
    rows = config.grpo.prompts_per_step * config.grpo.group_size
    assert sum(statuses.values()) == rows  # every sampled completion was run against its tests
    assert 0.0 <= grpo[0]["reward/code"] <= 1.0
