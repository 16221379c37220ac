"""rl.train.policy_io.starting_policy: which stages start fresh (the first, a distilled student), which go on
with the previous stage's policy, and the vocabulary bound (the tokenizer may fill the embedding exactly)."""

import types

import jax
import numpy as np
import pytest

from r1jax.errors import UserError
from r1jax.model.factory import init_policy
from r1jax.rl.config import load_config, stage_config
from r1jax.rl.train.policy_io import starting_policy
from r1jax.rl.update import split_policy
from r1jax.sharding.mesh import build_mesh
from tests.rl.conftest import TRAIN_CONFIG


def _setup(*overrides):
    config = load_config(TRAIN_CONFIG, list(overrides))
    return config, build_mesh(config.sharding), config.sharding.logical_rules()


def test_the_first_stage_starts_fresh_and_a_later_one_goes_on(tmp_path):
    config, mesh, rules = _setup()
    tok = types.SimpleNamespace(vocab_size=config.model.vocab_size)  # exactly the embedding's rows: allowed
    started = starting_policy(config, 0, config.stages[0], tok, None, mesh, rules)
    assert started is not None
    graphdef, (params, bias) = started
    assert jax.tree.leaves(params)
    assert starting_policy(config, 1, config.stages[1], tok, ("graphdef", ("p", "b")), mesh, rules) is None


def test_a_tokenizer_with_more_pieces_than_the_embedding_is_refused():
    config, mesh, rules = _setup()
    tok = types.SimpleNamespace(vocab_size=config.model.vocab_size + 1)
    with pytest.raises(UserError, match=r"stages\[sft\]: model.vocab_size=512 is smaller than the tokenizer's 513"):
        starting_policy(config, 0, config.stages[0], tok, None, mesh, rules)


def test_a_distilled_student_starts_fresh_in_its_own_shape():
    config, mesh, rules = _setup("stages=[{name: rs, kind: rejection_sampling}, "
                                 "{name: d, kind: distill, teacher: rs, student_overrides: [hidden_size=64]}]")
    tok = types.SimpleNamespace(vocab_size=config.model.vocab_size)
    started = starting_policy(config, 1, config.stages[1], tok, ("graphdef", ("p", "b")), mesh, rules)
    assert started is not None
    _, (params, _) = started
    widths = {leaf.shape[-1] for leaf in jax.tree.leaves(params) if np.ndim(leaf) == 2}
    assert 64 in widths and stage_config(config, 1).model.hidden_size == 64
    # drawn from the run's seed + the stage's index: a student of a run's first stage's seed would start where a
    # fresh first stage of its shape starts
    own, first = (split_policy(init_policy(stage_config(config, 1).model, config.seed + k, mesh, rules))[1]
                  for k in (1, 0))
    assert jax.tree.all(jax.tree.map(np.array_equal, params, own))
    assert not np.array_equal(jax.tree.leaves(params)[0], jax.tree.leaves(first)[0])
