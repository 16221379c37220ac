"""Logical rules, presets, mesh construction and the errors a mesh that cannot work gives."""

import dataclasses
import pickle

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from r1jax.errors import UserError
from r1jax.model.factory import abstract_policy
from r1jax.sharding.mesh import ShardingConfig, build_mesh
from r1jax.sharding.params import state_shardings
from r1jax.sharding.rules import PRESETS, Rules
from tests.model.tiny import DEEPSEEK, QWEN


def test_presets_map_logical_axes_to_mesh_axes():
    full = Rules.preset("fsdp_expert_tensor")
    assert full.spec(("experts", "embed", "expert_mlp")) == P("expert", "fsdp", "tensor")
    assert full.spec(("batch", "length", "act_embed")) == P(("data", "fsdp", "expert"), None, None)
    assert Rules.preset("fsdp").spec(("experts", "embed", "expert_mlp")) == P(None, "fsdp", None)
    assert Rules.preset("fsdp_tensor").spec(("vocab", "embed")) == P("tensor", "fsdp")
    assert Rules.preset("fsdp", {"vocab": ["tensor"]}).spec(("vocab",)) == P("tensor")
    assert {"fsdp", "fsdp_tensor", "fsdp_expert"} <= set(PRESETS)


def test_the_small_projections_input_axis_follows_embed_unless_the_inference_preset_splits_it():
    """`embed_in` (MLA's down-projections, the router): split as `embed` by every training preset and by an
    override of `embed`; over `tensor` in the inference preset, whose `embed` stays whole (those weights
    would be read whole per decoded token)."""
    for name in PRESETS:
        if name != "inference":
            assert Rules.preset(name).mesh_axes("embed_in") == ("fsdp",)
            assert Rules.preset(name, {"embed": ["tensor"]}).mesh_axes("embed_in") == ("tensor",)
    inference = Rules.preset("inference")
    assert inference.spec(("embed_in", "q_lora")) == P("tensor", None) and inference.mesh_axes("embed") == ()
    assert Rules.preset("inference", {"embed_in": []}).mesh_axes("embed_in") == ()
    _, state = nnx.split(abstract_policy(DEEPSEEK))
    moe = state["segments"][1]["block"]
    for weight in (moe["self_attn"]["q_a_proj"], moe["self_attn"]["kv_a_proj_with_mqa"], moe["mlp"]["router"]):
        assert weight.get_metadata()["axes"][1] == "embed_in"


def test_one_array_cannot_use_a_mesh_axis_twice():
    rules = Rules.preset("fsdp", {"mlp": ["fsdp"]})
    with pytest.raises(UserError, match="'embed' and 'mlp' both map to mesh axis 'fsdp'"):
        rules.spec(("embed", "mlp"))


def test_indivisible_dimension_names_parameter_axis_and_dimension():
    mesh = build_mesh(ShardingConfig(data=1, fsdp=1, expert=8, tensor=1))
    cfg = QWEN.__class__(**{**QWEN.__dict__, "n_routed_experts": 12})
    _, state = nnx.split(abstract_policy(cfg))
    with pytest.raises(UserError) as err:
        state_shardings(state, mesh, Rules.preset("fsdp_expert"))
    message = str(err.value)
    assert "'experts'" in message and "size 12" in message and "mesh axes expert of size 8" in message and "mlp." in message


def test_activation_hints_are_lenient_where_parameters_are_strict():
    rules = Rules.preset("fsdp_expert_tensor")
    shape = {"data": 1, "fsdp": 8, "expert": 1, "tensor": 1}
    assert rules.spec(("batch", None), (1, 4), shape, strict=False) == P(None, None)
    with pytest.raises(UserError, match="batch"):
        rules.spec(("batch", None), (1, 4), shape)


@pytest.mark.parametrize("sizes,devices,expected", [((1, -1, 1, 1), 8, (1, 8, 1, 1)),
                                                    ((2, 2, -1, 1), 8, (2, 2, 2, 1)),
                                                    ((1, 2, 2, 2), 8, (1, 2, 2, 2))])
def test_mesh_shape_resolution(sizes, devices, expected):
    assert ShardingConfig(*sizes).shape_for(devices) == expected


def test_mesh_that_cannot_work_is_a_clear_error():
    with pytest.raises(UserError, match="needs 16 devices but 8 are present"):
        build_mesh(ShardingConfig(data=2, fsdp=2, expert=2, tensor=2))
    with pytest.raises(UserError, match="does not divide the 8 devices"):
        ShardingConfig(data=3, fsdp=-1).shape_for(8)
    with pytest.raises(UserError, match="sharding.tensor=0"):
        ShardingConfig(tensor=0)
    with pytest.raises(UserError, match="at most one mesh axis may be -1"):
        ShardingConfig(data=-1, fsdp=-1)
    with pytest.raises(UserError, match="unknown mesh axes"):
        ShardingConfig(rules={"vocab": ["model"]})


def test_built_mesh_uses_all_devices_with_named_axes():
    mesh = build_mesh(ShardingConfig(data=2, fsdp=-1, expert=2, tensor=1))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "expert": 2, "tensor": 1}
    assert mesh.devices.size == len(jax.devices()) == 8


def test_every_deepseek_parameter_gets_a_sharding_on_the_full_preset():
    mesh = build_mesh(ShardingConfig(data=1, fsdp=2, expert=2, tensor=2))
    _, state = nnx.split(abstract_policy(DEEPSEEK))
    shardings = state_shardings(state, mesh, Rules.preset("fsdp_expert_tensor"))
    router_spec = shardings["segments"][1]["block"]["mlp"]["gate_proj"].spec
    assert router_spec == P(None, "expert", "fsdp", "tensor")  # (layers, experts, embed, expert_mlp)


@pytest.mark.parametrize("rows, expected", [(8, P(("expert", "tensor"), None)), (4, P(("expert",), None)),
                                            (2, P(("expert",), None))])
def test_whole_rows_split_over_the_batch_axes_then_the_vocabularys(rows, expected):
    """The token draw's logits: each row on one device, the rows over `expert` then `tensor` (the vocabulary's
    axis in the inference preset), an axis that does not divide the rows skipped; a no-op outside a mesh."""
    from r1jax.sharding.context import constrain_whole_rows, use_mesh

    mesh = build_mesh(ShardingConfig(data=1, fsdp=1, expert=2, tensor=4))
    x = jax.device_put(jax.numpy.arange(rows * 16.0).reshape(rows, 16),
                       jax.sharding.NamedSharding(mesh, P(("expert",), "tensor")))
    with use_mesh(mesh, Rules.preset("inference")):
        y = jax.jit(constrain_whole_rows)(x)
        odd = jax.numpy.ones((3, 16))
        assert constrain_whole_rows(odd) is odd  # no axis divides 3 rows: left as it is, not replicated
    assert y.sharding.is_equivalent_to(jax.sharding.NamedSharding(mesh, expected), 2), y.sharding.spec
    assert (y == x).all()
    assert constrain_whole_rows(x) is x


@pytest.mark.parametrize("kwargs, message", [
    (dict(data=-2), r"sharding.data=-2: a mesh axis size must be >= 1 or -1 \(fill\)"),
    (dict(rules={"vocab": "tensor"}), r"sharding.rules.vocab='tensor': expected a list of mesh axes"),
    (dict(rules={"vocab": ["tensor", "tensor"]}), r"sharding.rules.vocab=\['tensor', 'tensor'\]: a mesh axis may appear once"),
    (dict(rules={"nope": ["data"]}), r"sharding.rules.nope: unknown logical axis 'nope'"),
    (dict(preset="nope"), r"sharding.preset='nope': unknown; choose one of inference, fsdp"),
])
def test_a_sharding_config_that_cannot_work_names_the_field(kwargs, message):
    with pytest.raises(UserError, match=message):
        ShardingConfig(**kwargs)


def test_a_batch_must_split_evenly_not_just_cover_the_data_parallel_devices():
    from r1jax.sharding.mesh import check_batch_rows

    mesh = build_mesh(ShardingConfig(data=4, fsdp=-1))  # 4 x 2 = 8 data-parallel devices (fsdp is a batch axis)
    assert check_batch_rows(16, mesh, Rules.preset("fsdp")) == ("data", "fsdp", "expert")  # (expert: 1)
    with pytest.raises(UserError, match="a batch of 12 rows does not split over the 8 data-parallel devices "
                                        r"\(dataxfsdpxexpert\); make it a multiple of 8"):
        check_batch_rows(12, mesh, Rules.preset("fsdp"))


def test_activation_hints_split_what_divides_replicate_what_does_not_and_vanish_on_one_device():
    from r1jax.sharding.context import active_rules, constrain, use_mesh

    hint = jax.jit(lambda x: constrain(x, ("batch", None)))
    mesh = build_mesh(ShardingConfig())  # fsdp over the 8 devices
    with use_mesh(mesh, Rules.preset("fsdp")):
        split, odd = hint(jax.numpy.ones((8, 4))), hint(jax.numpy.ones((3, 4)))  # 3 rows: no error, replicated
    assert split.sharding.is_equivalent_to(jax.sharding.NamedSharding(mesh, P("fsdp", None)), 2)
    assert odd.sharding.is_fully_replicated
    with use_mesh(build_mesh(ShardingConfig(), devices=jax.devices()[:1]), Rules.preset("fsdp")):
        assert active_rules() is None  # one device: nothing to hint
    assert active_rules() is None
    outer, inner = Rules.preset("fsdp"), Rules.preset("inference")
    with use_mesh(mesh, outer):
        with use_mesh(mesh, inner):
            assert active_rules() is inner
        assert active_rules() is outer  # the inner block's rules end with it


def test_a_function_jitted_under_one_rules_table_is_traced_again_under_another_on_the_same_mesh():
    """JAX's jit cache holds the mesh, not r1jax's rules: a module-level jitted function (rl.sampler's
    generate_padded) traced under the training rules was reused under the inference rules on the same mesh, its
    hints the first table's. Equal tables still share one trace; a Rules is hashable by its table, whatever the
    process (the hash is not stored: pickled rules meet fresh ones)."""
    from r1jax.sharding.context import constrain, use_mesh

    traces = []

    @jax.jit
    def hint(x):
        traces.append(1)
        return constrain(x * 2, ("batch", None))

    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "fsdp"))
    specs = []
    for axes in (("data",), ("fsdp",), ("fsdp",), ("data",)):
        with use_mesh(mesh, Rules({"batch": axes})):
            specs.append(hint(jax.numpy.ones((8, 4))).sharding.spec)
    assert specs == [P("data"), P("fsdp"), P("fsdp"), P("data")] and len(traces) == 2
    same = Rules({"batch": ["data", "fsdp"]})
    assert same == Rules({"batch": ("data", "fsdp")}) and hash(same) == hash(Rules({"batch": ("data", "fsdp")}))
    assert same != Rules({"batch": ("fsdp", "data")}) and pickle.loads(pickle.dumps(same)) in {same}


def test_a_mesh_of_fewer_devices_than_present_is_refused_as_one_of_more():
    with pytest.raises(UserError, match="mesh data=1, fsdp=2, expert=1, tensor=1 needs 2 devices but 8 are present"):
        ShardingConfig(data=1, fsdp=2).shape_for(8)


def test_the_mesh_presets_are_the_readmes():
    """README (`r1jax compile --mesh`): fsdp, fsdp_tp4, ep8 / ep16 / ep64, ep16_lora (ep16 with MLA's latent
    axes also split over the expert axis); `config` is the config's own section."""
    from r1jax.sharding.mesh_presets import MESH_PRESETS, resolve_mesh

    assert list(MESH_PRESETS) == ["fsdp", "fsdp_tp4", "ep8", "ep16", "ep16_lora", "ep64"]
    fields = lambda name: dataclasses.astuple(resolve_mesh(name, None))  # data, fsdp, expert, tensor, preset, rules
    assert fields("fsdp") == (1, -1, 1, 1, "fsdp", None)
    assert fields("fsdp_tp4") == (1, -1, 1, 4, "fsdp_tensor", None)
    assert [fields(f"ep{n}")[:5] for n in (8, 16, 64)] == [(1, -1, n, 1, "fsdp_expert") for n in (8, 16, 64)]
    assert fields("ep16_lora") == (1, -1, 16, 1, "fsdp_expert", {"q_lora": ["expert"], "kv_lora": ["expert"]})
    own = ShardingConfig(data=2)
    assert resolve_mesh("config", own) is own
    with pytest.raises(UserError, match="unknown mesh preset 'ep32'; choose config or one of fsdp, fsdp_tp4, ep8"):
        resolve_mesh("ep32", own)
