"""The sampler's inference layout (rl.sampler_layout) on the 8-device CPU mesh: same samples as the training
layout, and no weight all-gather left in the compiled decode loop."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1jax.errors import UserError
from r1jax.model.factory import init_policy
from r1jax.rl.sampler import Sampler, SamplingConfig, generate_padded, left_pad
from r1jax.rl.sampler_layout import EXPERTS_OVER_TENSOR, choose_layout, default_sharding, reshard_metrics
from r1jax.rl.update import split_policy
from r1jax.sharding.context import use_mesh
from r1jax.sharding.decode_stats import decode_stats
from r1jax.sharding.mesh import ShardingConfig, build_mesh
from r1jax.sharding.params import path_name, tree_shardings
from r1jax.sharding.rules import Rules
from tests.model.tiny import DEEPSEEK, FAMILIES, QWEN

PROMPTS = [[5, 6, 7], [9, 10, 11, 12, 13, 14], [20], [30, 31]] * 2  # 8 rows: one per device
CONFIG = SamplingConfig(max_new_tokens=6, prompt_buckets=(8, 16), layout="inference")
TRAIN_RULES = Rules.preset("fsdp")
# Qwen's layers in one scan of 3 (an MLP-only layer would split it into scans of 1, whose weights XLA's CPU
# backend gathers once before the decode loop): each layer's gather then stays in the loop.
MODELS = {"qwen3_moe": dataclasses.replace(QWEN, mlp_only_layers=()), "deepseek_v3": DEEPSEEK}


def _trained_layout(family, per_layer=None, **model):
    """The policy as the trainer holds it on an 8-way FSDP mesh, and the sampler's inference layout; `model`:
    fields of the family's tiny config replaced."""
    graphdef, params, bias = split_policy(init_policy(dataclasses.replace(MODELS[family], **model), 0))
    mesh = build_mesh(ShardingConfig(fsdp=8, preset="fsdp"))
    state = jax.device_put((params, bias), tree_shardings((params, bias), mesh, TRAIN_RULES))
    layout, note = choose_layout(CONFIG, dataclasses.replace(MODELS[family], **model), mesh, TRAIN_RULES,
                                 per_layer=per_layer)
    return graphdef, state, mesh, layout, note


def _compiled_sampler(graphdef, state_key, mesh, rules, filters=True, samples=1, ignore_eos=True) -> str:
    """The sampler's program for `Sampler.generate`'s greedy draw above; `filters` False: the very program that
    draw compiled (CONFIG's top-k and top-p remove nothing: a cache hit), True: the one top-k or top-p compile.
    With `samples=2, ignore_eos=False`: `_sample`'s program, a rollout as GRPO runs it (rows stop)."""
    tokens, valid = left_pad(PROMPTS, CONFIG.prompt_buckets, 0)
    with use_mesh(mesh, rules):
        lowered = generate_padded.lower(graphdef, state_key[0], jnp.asarray(tokens), jnp.asarray(valid), state_key[1],
                                        jnp.float32(0), jnp.int32(0), jnp.float32(1),
                                        max_new=CONFIG.max_new_tokens, samples=samples, stop_ids=(3,), pad_id=0,
                                        ignore_eos=ignore_eos, keep_logits=False, vocab_size=None, filters=filters)
    return lowered.compile().as_text()


def _weight_allgather_bytes(graphdef, state_key, mesh, rules) -> int:
    """In the training layout's program that `Sampler.generate` ran (no filters: nothing compiled again)."""
    return decode_stats(_compiled_sampler(graphdef, state_key, mesh, rules, filters=False)).weight_allgather_bytes


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_inference_layout_samples_the_same_without_gathering_weights_in_the_decode_loop(family):
    graphdef, state, mesh, layout, note = _trained_layout(family)
    assert layout is not None and note.startswith("sampler layout: inference")
    trained = Sampler(graphdef, CONFIG, stop_ids=(3,), pad_id=0)
    inferring = Sampler(graphdef, CONFIG, stop_ids=(3,), pad_id=0, layout=layout)
    with use_mesh(mesh, TRAIN_RULES):  # the key made on the trainer's mesh, as the trainer makes it
        key = jax.random.split(jax.random.key(7))[0]
        expected = trained.generate(state, PROMPTS, key=key, temperature=0.0, ignore_eos=True)
        got = inferring.generate(state, PROMPTS, key=key, temperature=0.0, ignore_eos=True)
        # a later rollout reuses the compiled reshard, sampler and move back: nothing is traced again
        assert _traces(lambda: inferring.generate(state, PROMPTS, key=key, temperature=0.0, ignore_eos=True)) == 0
    assert np.array_equal(np.asarray(got.tokens_BT), np.asarray(expected.tokens_BT))
    np.testing.assert_allclose(np.asarray(got.logprobs_BN), np.asarray(expected.logprobs_BN), atol=1e-5)
    assert np.array_equal(np.asarray(got.experts_LBTK), np.asarray(expected.experts_LBTK))
    assert got.tokens_BT.sharding.mesh.shape == mesh.shape  # results come back on the trainer's mesh
    assert reshard_metrics(inferring)["time/reshard_s"] > 0 and reshard_metrics(inferring)["time/reshard_s"] == 0
    assert reshard_metrics(trained) == {}
    assert _weight_allgather_bytes(graphdef, (state, key), mesh, TRAIN_RULES) > 0
    # the rollout's program with rows that stop (its stop mask once tipped XLA into gathering DeepSeek's router
    # weight, split over `tensor`, at every token: model.routing._split_like_router)
    program = _compiled_sampler(layout.graphdef, layout.reshard((state, key)), layout.mesh, layout.rules,
                                samples=2, ignore_eos=False)
    assert decode_stats(program).weight_allgather_bytes == 0
    # the token draw takes each row whole on one device (sharding.context.constrain_whole_rows): the logits,
    # vocabulary over `tensor` (4 in DeepSeek's layout), are not gathered to every `tensor` device
    vocab = MODELS[family].vocab_size
    assert not re.search(rf"= \w+\[[\d,]*\b{vocab}\]\S* all-gather(-start)?\(", program)


def _traces(run) -> int:
    """How many programs (a jit's or an eager operation's) JAX traced while `run()` ran."""
    events = []

    def listener(event, duration, **_):
        events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        run()
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    return events.count("/jax/core/compile/jaxpr_trace_duration")


def _sample(graphdef, weights, key, layout):
    """The fixed-batch sampler's rollout (temperature 1: draws and log-probs) in `layout`'s mesh and rules."""
    tokens, valid = left_pad(PROMPTS, CONFIG.prompt_buckets, 0)
    with use_mesh(layout.mesh, layout.rules):
        return generate_padded(graphdef, weights, jnp.asarray(tokens), jnp.asarray(valid), key, jnp.float32(1),
                               jnp.int32(0), jnp.float32(1), max_new=CONFIG.max_new_tokens, samples=2,
                               stop_ids=(3,), pad_id=0, ignore_eos=False)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_inference_copy_holds_each_layer_apart_and_samples_as_the_stacked_layers(family):
    """What an accelerator's sampler runs (on CPU the copy stays stacked: `per_layer` defaults to False)."""
    assert not _trained_layout(family)[3].per_layer
    graphdef, state, _, layout, _ = _trained_layout(family, per_layer=True)
    key = jax.random.key(3)
    per_layer, key = layout.reshard((state, key))
    # on TPU a kernel (the experts' ragged dot) takes whole buffers: no weight of the copy is a slice of a
    # stack of layers, which XLA would copy at every decode step
    axes = [v.get_metadata()["axes"] for v in jax.tree.leaves(per_layer, is_leaf=lambda x: isinstance(x, nnx.Variable))]
    assert axes and not any("layers" in a for a in axes)
    cfg = MODELS[family]
    moe = [kind for kind, _ in cfg.layer_segments()].index("moe")  # resharding it again keeps it per layer
    assert layout.reshard(per_layer)[0]["segments"][moe]["layers"][0]["mlp"]["gate_proj"].shape == (
        cfg.n_routed_experts, cfg.hidden_size, cfg.moe_intermediate_size)
    stacked = jax.device_put(state, tree_shardings(state, layout.mesh, layout.rules))
    expected = _sample(graphdef, stacked, key, layout)
    got = _sample(layout.graphdef, per_layer, key, layout)
    for name in ("tokens_BT", "valid_BT", "lengths_B", "experts_LBTK"):
        assert np.array_equal(np.asarray(getattr(got, name)), np.asarray(getattr(expected, name))), name
    if family == "qwen3_moe":
        np.testing.assert_array_equal(np.asarray(got.logprobs_BN), np.asarray(expected.logprobs_BN))
    else:  # MLA's down-projections and the router sum partial products over `tensor` (sharding.rules'
        # embed_in), which XLA's CPU backend adds in another order in the unrolled layers than in their scan
        np.testing.assert_allclose(np.asarray(got.logprobs_BN), np.asarray(expected.logprobs_BN), atol=1e-6)


def test_family_defaults_split_experts_and_deepseek_heads():
    qwen = default_sharding(QWEN, 8)
    assert (qwen.expert, qwen.tensor, qwen.preset) == (8, 1, "inference")
    deepseek = default_sharding(DEEPSEEK, 8)  # 4 heads: tensor 4, experts over the other 2 devices
    assert (deepseek.expert, deepseek.tensor) == (2, 4)
    # whole experts over expert x tensor where that divides the experts (8 over 2 x 4: one per device) ...
    assert deepseek.rules == EXPERTS_OVER_TENSOR and qwen.rules is None
    assert deepseek.logical_rules().mesh_axes("experts") == ("expert", "tensor")
    assert deepseek.logical_rules().mesh_axes("expert_mlp") == ()
    big = dataclasses.replace(DEEPSEEK, num_attention_heads=128, n_routed_experts=256)
    assert (default_sharding(big, 256).expert, default_sharding(big, 256).tensor) == (16, 16)
    # ... else each expert's width over tensor (256 experts do not split over 32 x 16 devices)
    assert default_sharding(big, 512).rules is None and default_sharding(big, 256).rules == EXPERTS_OVER_TENSOR
    # sampling.rules apply on top of the family default
    mesh = build_mesh(ShardingConfig(fsdp=8, preset="fsdp"))
    layout, _ = choose_layout(dataclasses.replace(CONFIG, rules={"vocab": []}), DEEPSEEK, mesh, TRAIN_RULES)
    assert layout.rules.mesh_axes("experts") == ("expert", "tensor") and layout.rules.mesh_axes("vocab") == ()


def test_one_device_keeps_the_training_layout():
    mesh = build_mesh(ShardingConfig(fsdp=1), jax.devices()[:1])
    assert choose_layout(dataclasses.replace(CONFIG, layout="auto"), QWEN, mesh, TRAIN_RULES) == (None, "")


def test_a_weight_copy_that_does_not_fit_falls_back_to_the_training_layout():
    mesh = build_mesh(ShardingConfig(fsdp=8, preset="fsdp"))
    auto = dataclasses.replace(CONFIG, layout="auto")
    layout, note = choose_layout(auto, QWEN, mesh, TRAIN_RULES, free_bytes=1000)
    assert layout is None and note.startswith("sampler layout: train (the inference layout") and "GiB free" in note
    with pytest.raises(UserError, match="sampling.layout=inference: the inference layout"):
        choose_layout(CONFIG, QWEN, mesh, TRAIN_RULES, free_bytes=1000)
    # an unknown mesh axis is SamplingConfig's error: it never reaches choose_layout, whose `auto` would fall back
    with pytest.raises(UserError, match="sampling.mesh: unknown axes"):
        dataclasses.replace(CONFIG, mesh={"pipeline": 2})
    layout, _ = choose_layout(dataclasses.replace(auto, mesh={"expert": 2, "tensor": 2}), QWEN, mesh, TRAIN_RULES)
    assert dict(layout.mesh.shape) == {"data": 1, "fsdp": 2, "expert": 2, "tensor": 2}


def test_sampling_rules_beat_the_deepseek_default():
    assert default_sharding(DEEPSEEK, 8).rules == EXPERTS_OVER_TENSOR  # names experts and expert_mlp
    sampling = SamplingConfig(max_new_tokens=6, prompt_buckets=(8, 16), layout="inference",
                              rules={"experts": ["expert"], "expert_mlp": ["tensor"]})
    mesh = build_mesh(ShardingConfig(fsdp=8, preset="fsdp"))
    layout, _ = choose_layout(sampling, DEEPSEEK, mesh, Rules.preset("fsdp"))
    assert layout.rules.mesh_axes("experts") == ("expert",)
    assert layout.rules.mesh_axes("expert_mlp") == ("tensor",)


def test_the_weight_copy_may_take_at_most_half_the_free_hbm():
    from r1jax.model.factory import abstract_policy
    from r1jax.rl.sampler_layout import inference_sharding
    from r1jax.sharding.compile_stats import device_bytes
    from r1jax.sharding.params import abstract_sharded

    sampling = SamplingConfig(max_new_tokens=6, prompt_buckets=(8, 16), layout="auto")
    mesh = build_mesh(ShardingConfig(fsdp=8, preset="fsdp"))
    sharding = inference_sharding(sampling, QWEN, 8)
    _, params, bias = split_policy(abstract_policy(QWEN))
    need = device_bytes(abstract_sharded((params, bias), build_mesh(sharding), sharding.logical_rules()))
    assert choose_layout(sampling, QWEN, mesh, Rules.preset("fsdp"), free_bytes=2 * need)[0] is not None
    layout, note = choose_layout(sampling, QWEN, mesh, Rules.preset("fsdp"), free_bytes=2 * need - 2)
    assert layout is None and "more than 50% of the" in note


def test_reshard_seconds_add_up_until_taken(monkeypatch):
    """Two reshards between two reads of time/reshard_s (a rollout's and a second model's, or a retried one) both
    count: each takes 1 s on a clock that ticks one second a reading."""
    import types

    from r1jax.rl import sampler_layout

    _, state, _, layout, _ = _trained_layout("qwen3_moe")
    layout.take_seconds()
    ticks = iter(range(100))
    monkeypatch.setattr(sampler_layout, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    layout.reshard(state)
    layout.reshard(state)
    assert layout.take_seconds() == 2.0 and layout.take_seconds() == 0.0


@pytest.mark.parametrize("model", [{}, {"compute_dtype": "bfloat16", "tie_word_embeddings": True}])
def test_the_placed_copy_splits_no_weight_over_fsdp_and_its_bytes_are_what_the_fit_check_counts(model):
    """Read from the placed arrays: no weight of the inference copy is split over `fsdp` (a decode loop would
    gather it at every token), the experts are split over `expert`; the fit check's bytes per device are the
    bytes device 0 holds, so the copy fits in twice them and falls back 2 bytes below. Also for the bfloat16
    copy of a tied model, whose embedding table (its LM head) stays float32: the fit check counted it cast."""
    _, state, mesh, layout, _ = _trained_layout("qwen3_moe", **model)
    placed = layout.reshard(state)
    specs = [x.sharding.spec for x in jax.tree.leaves(placed)]
    axes = {a for spec in specs for part in spec if part for a in ((part,) if isinstance(part, str) else part)}
    assert "fsdp" not in axes and "expert" in axes
    device = mesh.devices.flat[0]
    held = sum(s.data.nbytes for x in jax.tree.leaves(placed) for s in x.addressable_shards if s.device == device)
    sampling, config = dataclasses.replace(CONFIG, layout="auto"), dataclasses.replace(MODELS["qwen3_moe"], **model)
    assert choose_layout(sampling, config, mesh, TRAIN_RULES, free_bytes=2 * held)[0] is not None
    layout, note = choose_layout(sampling, config, mesh, TRAIN_RULES, free_bytes=2 * held - 2)
    assert layout is None and "more than 50% of the" in note


def test_free_hbm_is_the_least_free_of_this_process_devices_and_none_where_one_states_none():
    import types

    from r1jax.rl.sampler_layout import free_hbm_bytes

    def device(limit, used, process=0):
        stats = {"bytes_limit": limit, "bytes_in_use": used} if limit else {}
        return types.SimpleNamespace(process_index=process, memory_stats=lambda: stats)

    mesh = lambda *devices: types.SimpleNamespace(devices=np.array(devices, dtype=object))
    assert free_hbm_bytes(mesh(device(100, 30), device(100, 60), device(10, 0, process=1))) == 40
    assert free_hbm_bytes(mesh(device(100, 30), device(0, 0))) is None
    assert free_hbm_bytes(mesh(device(0, 0, process=1))) is None  # no device of this process


def test_reshard_time_is_a_metric_only_for_a_sampler_that_reshards():
    import types

    layout = types.SimpleNamespace(take_seconds=lambda: 1.5)
    assert reshard_metrics(types.SimpleNamespace(layout=layout)) == {"time/reshard_s": 1.5}
    assert reshard_metrics(types.SimpleNamespace(layout=None)) == {} == reshard_metrics(object())


def test_an_inference_mesh_that_does_not_divide_falls_back_under_auto_and_is_refused_when_asked_for():
    mesh = build_mesh(ShardingConfig(fsdp=8, preset="fsdp"))
    sampling = dataclasses.replace(CONFIG, mesh={"expert": 3})  # 3 does not divide 8 devices
    with pytest.raises(UserError):
        choose_layout(sampling, QWEN, mesh, TRAIN_RULES)
    layout, note = choose_layout(dataclasses.replace(sampling, layout="auto"), QWEN, mesh, TRAIN_RULES)
    assert layout is None and note.startswith("sampler layout: train (the inference layout (sampling.mesh="
                                                  "{'expert': 3}) does not apply: the fixed mesh axes")


def test_the_fallback_line_states_the_copy_and_the_free_hbm_in_gib():
    """Shapes only (no array is made): an untied 2^17 x 2^12 float32 embedding and head are 2 GiB each, held
    whole on every device (`tensor` = 1), so the copy needs 4.0x GiB per device: past half of 3 GiB free."""
    big = dataclasses.replace(QWEN, vocab_size=2**17, hidden_size=2**12)
    mesh = build_mesh(ShardingConfig(fsdp=8, preset="fsdp"))
    layout, note = choose_layout(dataclasses.replace(CONFIG, layout="auto"), big, mesh, TRAIN_RULES,
                                 free_bytes=3 * 2**30)
    assert layout is None and re.search(r"needs 4\.0\d GiB per device .* more than 50% of the 3\.00 GiB free", note)


def test_an_inference_mesh_that_does_not_fit_is_named_as_sampling_mesh_not_the_sharding_section():
    """`sampling.mesh={expert: 16}` on 8 devices said "sharding: the fixed mesh axes ... multiply to 16" under
    `layout: inference`: the trainer's `sharding` section, which fits; the error names sampling.mesh."""
    mesh = build_mesh(ShardingConfig(fsdp=8, preset="fsdp"))
    sampling = dataclasses.replace(CONFIG, mesh={"expert": 16})
    with pytest.raises(UserError, match=re.escape("sampling.layout=inference: the inference layout (sampling.mesh="
                                                  "{'expert': 16}) does not apply: the fixed mesh axes")) as info:
        choose_layout(sampling, QWEN, mesh, TRAIN_RULES)
    assert "sharding" not in str(info.value)
    layout, note = choose_layout(dataclasses.replace(sampling, layout="auto"), QWEN, mesh, TRAIN_RULES)
    assert layout is None and "(sampling.mesh={'expert': 16}) does not apply: " in note


def test_a_weight_the_inference_mesh_cannot_split_is_named_by_its_own_path():
    """tensor 4 against the tiny Qwen's 2 KV heads: the message named '0.segments.0...' (the index of the
    (params, bias) pair the fit check sharded together) where the parameter is 'segments.0...'."""
    mesh = build_mesh(ShardingConfig(fsdp=8, preset="fsdp"))
    with pytest.raises(UserError, match=r"does not apply: segments\.0\.block\.self_attn\.k_proj: dimension 2"):
        choose_layout(dataclasses.replace(CONFIG, mesh={"tensor": 4}), QWEN, mesh, TRAIN_RULES)


def test_a_rollout_comes_back_split_by_rows_on_the_trainer_mesh_and_the_cpu_copy_stays_stacked():
    """Each of the 8 trainer devices holds one row of every field, the routing record [L, B, T, K] split on B
    (its axis 1), the scalar `steps` whole; on CPU the inference copy keeps its layers stacked (module docstring)."""
    from jax.sharding import NamedSharding, PartitionSpec

    from r1jax.rl.decoding import Rollout

    _, state, mesh, layout, _ = _trained_layout("qwen3_moe")
    assert layout.per_layer is False
    here = lambda shape: jax.device_put(np.zeros(shape, np.int32), NamedSharding(layout.mesh, PartitionSpec()))
    fake = lambda placed: Rollout(here((8, 5)), here((8, 5)), here((8, 5)), here((8, 2)), here((8,)),
                                  here((3, 8, 5, 2)), here(()))
    rollout = layout.run(state, fake)
    for name, value in rollout._asdict().items():
        if value is None:
            continue
        shapes = {s.data.shape for s in value.addressable_shards}
        assert shapes == ({()} if name == "steps" else {(3, 1, 5, 2)} if name == "experts_LBTK" else
                          {(1, *value.shape[1:])}), name
        assert {s.device for s in value.addressable_shards} == set(mesh.devices.flat)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_inference_copy_holds_weights_in_the_compute_dtype_and_samples_as_the_float32_copy(family):
    """float32 master weights under bfloat16 compute: the copy the decode reads is cast once, at reshard, where
    the layers cast to the compute dtype (model.factory.cast_to_compute); norms, router and LM head stay float32.
    Its rollout is the float32 copy's to the bit (each use cast the weight to bfloat16 anyway), and the fit check
    counts the narrow copy. Every weight is moved off its initial value (norm scales of 1, biases of 0 and a
    routing bias of 0 are the same in bfloat16, so a copy narrowing them sampled alike), with attention biases
    and, for Qwen3, a tied embedding table: a weight the layers use in float32 that the copy narrows fails here."""
    model = dataclasses.replace(MODELS[family], compute_dtype="bfloat16", attention_bias=True,
                                tie_word_embeddings=family == "qwen3_moe")
    graphdef, params, bias = split_policy(init_policy(model, 0))
    leaves, treedef = jax.tree.flatten((params, bias))
    keys = jax.random.split(jax.random.key(3), len(leaves))
    params, bias = jax.tree.unflatten(treedef, [x + 0.05 * jax.random.normal(k, x.shape, x.dtype)
                                                for k, x in zip(keys, leaves)])
    mesh = build_mesh(ShardingConfig(fsdp=8, preset="fsdp"))
    state = jax.device_put((params, bias), tree_shardings((params, bias), mesh, TRAIN_RULES))
    layout, note = choose_layout(CONFIG, model, mesh, TRAIN_RULES)
    placed = layout.reshard(state)
    dtypes = {path_name(p): x.dtype for p, x in jax.tree_util.tree_leaves_with_path(placed[0])}
    float32 = {name for name, dtype in dtypes.items() if dtype == jnp.float32}
    kept = ("router", "lm_head", "weight", "embed_tokens")
    assert float32 and all(name.split(".")[-2] in kept for name in float32), float32
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(placed[1]))  # DeepSeek's routing bias
    assert dtypes["embed_tokens.value"] == (jnp.float32 if model.tie_word_embeddings else jnp.bfloat16)
    assert any(".mlp.gate_proj" in n for n in dtypes if dtypes[n] == jnp.bfloat16)
    assert any("_bias" in n for n in dtypes if dtypes[n] == jnp.bfloat16)
    device = layout.mesh.devices.flat[0]
    held = sum(s.data.nbytes for x in jax.tree.leaves(placed) for s in x.addressable_shards if s.device == device)
    assert f"{held / 2**30:.2f} GiB of weights per device" in note
    wide = dataclasses.replace(layout, model=None, _arrangements={})  # as it was: float32, cast at each use
    assert jax.tree.leaves(wide.reshard(state))[0].dtype == jnp.float32
    key = jax.random.key(5)
    got, expected = (_sample(graphdef, copy.reshard((state, key))[0], key, copy) for copy in (layout, wide))
    for name in ("tokens_BT", "lengths_B", "experts_LBTK", "logprobs_BN"):
        np.testing.assert_array_equal(np.asarray(getattr(got, name)), np.asarray(getattr(expected, name)), name)


def test_a_copy_whose_dtypes_equal_the_compute_dtype_is_the_trained_state():
    """float32/float32 (configs/bench*.yaml): the reshard casts nothing and the CPU copy passes through as is."""
    _, state, _, layout, _ = _trained_layout("qwen3_moe")
    assert layout.model is not None and layout._arranged(state) is state
