"""Shardings of trees holding NNX Variables (sharding.params): parameters and optimizer moments by their logical
axes, plain arrays (step counters) replicated; the ShapeDtypeStructs that carry them (a restore target, a compile
argument); key paths as dotted names."""

import collections

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from r1jax.errors import UserError
from r1jax.sharding.mesh import ShardingConfig, build_mesh
from r1jax.sharding.params import abstract_sharded, path_keys, path_name, tree_shardings
from r1jax.sharding.rules import Rules

Moments = collections.namedtuple("Moments", "mu nu")


@pytest.fixture(scope="module")
def mesh():
    return build_mesh(ShardingConfig(data=1, fsdp=4, expert=2, tensor=1))


def _tree():
    """An optimizer-state-like tree: moments (Variables of any kind, with logical axes or none), a plain step."""
    return {"opt": [Moments(mu={"w": nnx.Variable(jnp.zeros((8, 6), jnp.bfloat16), axes=("embed", None))},
                            nu={"e": nnx.Param(jnp.zeros((2, 4)), axes=("experts", "embed")),
                                "bare": nnx.Param(jnp.zeros((4, 3)))})],
            "step": jnp.zeros((), jnp.int32)}


def test_key_paths_read_as_the_keys_stored_and_as_dotted_names():
    """Dict keys, sequence indices and attribute names (a namedtuple's field) as themselves."""
    leaves = jax.tree_util.tree_flatten_with_path({"opt": [Moments(mu={"w": 1}, nu=2)]})[0]
    paths = [path for path, _ in leaves]
    assert [path_keys(p) for p in paths] == [("opt", 0, "mu", "w"), ("opt", 0, "nu")]
    assert [path_name(p) for p in paths] == ["opt.0.mu.w", "opt.0.nu"]


def test_variables_shard_by_their_logical_axes_and_plain_arrays_replicate(mesh):
    shardings = tree_shardings(_tree(), mesh, Rules.preset("fsdp_expert"))
    moments = shardings["opt"][0]
    assert moments.mu["w"].spec == P("fsdp", None)  # embed over fsdp
    assert moments.nu["e"].spec == P("expert", "fsdp")  # experts over expert
    assert moments.nu["bare"].spec == P(None, None)  # no axes: replicated
    assert shardings["step"].spec == P() and shardings["step"].mesh == mesh


def test_abstract_arrays_keep_shape_and_dtype_and_carry_their_sharding(mesh):
    abstract = abstract_sharded(_tree(), mesh, Rules.preset("fsdp_expert"))
    w, step = abstract["opt"][0].mu["w"].get_value(), abstract["step"]
    assert (w.shape, w.dtype, w.sharding.spec) == ((8, 6), jnp.bfloat16, P("fsdp", None))
    assert (step.shape, step.dtype, step.sharding.spec) == ((), jnp.int32, P())
    assert abstract["opt"][0].nu["e"].get_value().sharding.spec == P("expert", "fsdp")


def test_a_moment_that_does_not_divide_names_its_path(mesh):
    tree = {"opt": [Moments(mu={"w": nnx.Param(jnp.zeros((6, 2)), axes=("embed", None))}, nu={})]}
    with pytest.raises(UserError, match=r"^opt\.0\.mu\.w: dimension 0 \('embed', size 6\) does not divide by mesh "
                                        r"axes fsdp of size 4"):
        tree_shardings(tree, mesh, Rules.preset("fsdp"))
