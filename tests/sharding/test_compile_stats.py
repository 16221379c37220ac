"""Compiling for libtpu's compile-only devices on this CPU host: per-device bytes of sharded abstract arrays,
a program's memory and cost per device, one compile per program, and libtpu's refusal read as a need."""

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from r1jax.sharding.compile_stats import compile_stats, device_bytes
from r1jax.sharding.mesh import ShardingConfig, build_mesh
from r1jax.sharding.topology import abstract_devices

pytestmark = pytest.mark.usefixtures("optimized_xla_compile")  # compiles for TPU (tests/conftest.py)


@pytest.fixture(scope="module")
def mesh():
    return build_mesh(ShardingConfig(fsdp=-1), list(abstract_devices("v5p:2x2x1")))  # 4 chips, fsdp=4


def _abstract(mesh, shape, dtype, spec):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))


def test_device_bytes_counts_one_device_shard(mesh):
    tree = {"split": _abstract(mesh, (8, 6), jnp.float32, P("fsdp")),
            "whole": [_abstract(mesh, (3,), jnp.bfloat16, P())]}
    assert device_bytes(tree) == 2 * 6 * 4 + 3 * 2  # a quarter of the rows in float32, all of the bfloat16


def test_a_program_reports_its_shard_and_compiles_once(mesh):
    x = _abstract(mesh, (1024, 256), jnp.float32, P("fsdp"))
    stats = compile_stats(jax.jit(lambda v: v * 2).lower(x), mesh)
    shard = 256 * 256 * 4  # each device holds a quarter of the rows
    assert stats.error is None and stats.argument_bytes == shard and stats.output_bytes == shard
    assert stats.flops == 256 * 256  # one multiply per element of the shard
    assert stats.peak_bytes >= stats.argument_bytes + stats.output_bytes + stats.code_bytes - stats.alias_bytes
    assert compile_stats(jax.jit(lambda v: v * 2).lower(x), mesh) is stats  # the same text: not compiled again


def test_a_program_libtpu_refuses_gives_its_stated_need(mesh):
    x = _abstract(mesh, (), jnp.float32, P())
    stats = compile_stats(jax.jit(lambda v: jnp.broadcast_to(v, (2**38,)) * 2).lower(x), mesh)  # 1 TiB out
    assert stats.error.startswith("RESOURCE_EXHAUSTED") and stats.peak_bytes == 2**40
    assert stats.flops is None and stats.temp_bytes == 0


def test_without_the_compilers_peak_a_program_needs_its_buffers_less_the_donated_ones_plus_its_code():
    """Where memory_analysis states no peak: arguments + outputs - aliased (donated) + temporaries, and the
    generated code (hand-computed from a stand-in compiled program)."""
    from types import SimpleNamespace

    from r1jax.sharding.compile_stats import _compile

    memory = SimpleNamespace(argument_size_in_bytes=1000, output_size_in_bytes=300, alias_size_in_bytes=200,
                             temp_size_in_bytes=50, generated_code_size_in_bytes=7)
    compiled = SimpleNamespace(memory_analysis=lambda: memory, cost_analysis=lambda: {"flops": 3.0},
                               as_text=lambda: "HloModule m\n\nENTRY %main () -> f32[] {\n  ROOT %c = f32[] constant(1)\n}\n")
    stats = _compile(SimpleNamespace(compile=lambda: compiled), 1, ())
    assert stats.peak_bytes == 1000 + 300 - 200 + 50 + 7 and stats.flops == 3.0
    assert stats.working_bytes == 1157 - 1000 - 7  # beside its arguments and code: 150
