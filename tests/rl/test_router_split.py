"""The MoE router's input split over the hidden size as its weight is, in the sampler's inference layout
(model.routing._split_like_router): DeepSeek's tiny rollout on the 8-device CPU mesh (expert 2 x tensor 4),
with stop ids live, compiled with and without the hint."""

import jax
import jax.numpy as jnp

import r1jax.model.routing as routing
from r1jax.sharding.context import use_mesh
from r1jax.sharding.decode_stats import decode_stats
from tests.rl.test_sampler_layout import PROMPTS, TRAIN_RULES, _compiled_sampler, _trained_layout

MOE_LAYERS, EXPERTS, HIDDEN = 2, 8, 32  # tests.model.tiny.DEEPSEEK's


def _decode_step(layout, placed):
    """The decode step of test_sampler_layout's rollout with rows that stop (two samples a prompt)."""
    jax.clear_caches()  # the jitted sampler's trace depends on routing's module global: trace it again
    try:
        return decode_stats(_compiled_sampler(layout.graphdef, placed, layout.mesh, layout.rules, samples=2,
                                              ignore_eos=False))
    finally:
        jax.clear_caches()


def test_the_router_hint_removes_the_weight_gather_and_adds_no_other_gather(monkeypatch):
    _, state, _, layout, _ = _trained_layout("deepseek_v3")
    assert dict(layout.mesh.shape)["tensor"] == 4 and layout.rules.mesh_axes("embed_in") == ("tensor",)
    placed = layout.reshard((state, jax.random.key(7)))
    hinted = _decode_step(layout, placed)
    monkeypatch.setattr(routing, "_split_like_router", lambda x_TD: x_TD)
    unhinted = _decode_step(layout, placed)
    # a device receives 3/4 of a tensor-4 gather or sum
    weight = HIDDEN * EXPERTS * 4 * 3 // 4
    assert (unhinted.weight_allgathers, unhinted.weight_allgather_bytes) == (MOE_LAYERS, MOE_LAYERS * weight)
    assert (hinted.weight_allgathers, hinted.weight_allgather_bytes) == (0, 0)
    # the split reaches no other reader of the residual stream (alone it spread back to the MoE dispatch and
    # the shared experts, which then gathered their input: 1,536 bytes a step more than without the hint)
    gathered = hinted.collective_bytes["all-gather"]
    assert gathered <= unhinted.collective_bytes["all-gather"] - unhinted.weight_allgather_bytes
    # the partial logits are summed instead: at most one f32 [rows, experts] sum per MoE layer
    rows = len(PROMPTS) * 2 // dict(layout.mesh.shape)["expert"]
    summed = hinted.collective_bytes["all-reduce"] - unhinted.collective_bytes["all-reduce"]
    assert 0 <= summed <= MOE_LAYERS * rows * EXPERTS * 4 * 3 // 4


def test_the_training_layout_leaves_the_router_input_as_it_is():
    """Under the trainer's rules `embed_in` is on fsdp, which also splits the rows: no hint (one array cannot
    use a mesh axis twice); under the inference layout's, two (the residual stream, then the split)."""
    _, _, mesh, layout, _ = _trained_layout("deepseek_v3")
    x_TD = jnp.ones((len(PROMPTS), HIDDEN), jnp.float32)
    for m, rules, hints in ((mesh, TRAIN_RULES, 0), (layout.mesh, layout.rules, 2)):
        with use_mesh(m, rules):
            jaxpr = jax.make_jaxpr(routing._split_like_router)(x_TD)
        assert [e.primitive.name for e in jaxpr.eqns].count("sharding_constraint") == hints
