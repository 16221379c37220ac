"""Drawn tokens (temperature 1) in the sampler's inference layout, whose logits leave the LM head split over
`tensor` and are drawn from so without filters (rl.decoding.sample_token; tests/rl/test_decoding.py checks that no
logits move): the training layout's tokens, on the 8-device CPU mesh."""

import jax
import numpy as np

from r1jax.rl.sampler import Sampler
from r1jax.sharding.context import use_mesh
from tests.rl.test_sampler_layout import CONFIG, PROMPTS, TRAIN_RULES, _trained_layout


def test_deepseek_draws_in_the_inference_layout_the_training_layouts_tokens_from_logits_left_split():
    graphdef, state, mesh, layout, _ = _trained_layout("deepseek_v3")
    assert layout.mesh.shape["tensor"] == 4 and layout.rules.mesh_axes("act_vocab") == ("tensor",)
    trained = Sampler(graphdef, CONFIG, stop_ids=(3,), pad_id=0)
    inferring = Sampler(graphdef, CONFIG, stop_ids=(3,), pad_id=0, layout=layout)
    with use_mesh(mesh, TRAIN_RULES):
        key = jax.random.split(jax.random.key(11))[0]
        expected = trained.generate(state, PROMPTS, 2, key=key, temperature=1.0)
        got = inferring.generate(state, PROMPTS, 2, key=key, temperature=1.0)
    for name in ("tokens_BT", "valid_BT", "lengths_B", "experts_LBTK"):
        assert np.array_equal(np.asarray(getattr(got, name)), np.asarray(getattr(expected, name))), name
    # the vocabulary's shares of a row are summed in another order than the whole row's: float rounding
    np.testing.assert_allclose(np.asarray(got.logprobs_BN), np.asarray(expected.logprobs_BN), atol=1e-5)
