"""Data rows and pipelines, cases the mutation rounds found untested: each test pins a behaviour a user sees
(the verifier a row gets, the worked solution it trains on, a refused row) against a hand-written answer."""

import json

import pytest

from r1jax.errors import UserError
from r1jax.rl.data import DataConfig, TaskSource, load_problems, make_iterator, split_answer
from r1jax.rl.tasks import get_task


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


def test_a_task_listed_twice_is_refused_not_generated_twice():
    # (arithmetic, arithmetic, countdown) generated every arithmetic problem twice, side by side in a batch
    with pytest.raises(UserError, match=r"data.tasks lists 'arithmetic' more than once"):
        DataConfig(tasks=("arithmetic", "countdown", "arithmetic"))
    source = TaskSource([get_task("arithmetic"), get_task("countdown")], seed=0, size=40)
    prompts = [source[i]["prompt"] for i in range(40)]
    assert len(set(prompts[0::2])) > 15 and all(p.startswith("Make") for p in prompts[1::2])
