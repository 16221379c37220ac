"""A convolution's FLOPs (sharding.hlo_traffic), as XLA's own cost analysis counts them: XLA's TPU compiler
lowers dots to convolutions and may put a contracted dimension (a weight gradient's batch) in a window; its
FLOPs were counted without windows (Qwen3-30B-A3B's update on v5p-16: 0.898 PFLOP per chip counted of ~1.289).
Reference: `compiled.cost_analysis()["flops"]` of one convolution on this CPU (XLA's HloCostAnalysis)."""

import jax
import jax.numpy as jnp
import pytest
from jax import lax

from r1jax.sharding.hlo_traffic import HloTraffic


@pytest.mark.parametrize("lhs, rhs, strides, padding, lhs_dilation, rhs_dilation, groups", [
    ((2, 3, 10), (4, 3, 3), (1,), [(0, 0)], (1,), (1,), 1),
    ((2, 3, 10), (4, 3, 3), (1,), [(1, 1)], (1,), (1,), 1),  # padding reads nothing
    ((2, 3, 10), (4, 3, 3), (2,), [(2, 1)], (1,), (1,), 1),
    ((2, 3, 10), (4, 3, 3), (1,), [(1, 1)], (1,), (2,), 1),
    ((2, 3, 10), (4, 3, 3), (1,), [(2, 2)], (2,), (1,), 1),  # a dilated input's holes read nothing
    ((2, 3, 10), (4, 3, 3), (3,), [(0, 4)], (2,), (2,), 1),
    ((1, 64, 128), (16, 64, 128), (1,), [(0, 0)], (1,), (1,), 1),  # a contracted dimension as the whole window
    ((2, 6, 9, 7), (4, 3, 3, 2), (2, 1), [(1, 2), (0, 1)], (1, 1), (1, 3), 2),
])
def test_convolution_flops_equal_xla_cost_analysis(lhs, rhs, strides, padding, lhs_dilation, rhs_dilation, groups):
    spatial = "HW"[:len(lhs) - 2]
    numbers = ("NC" + spatial, "OI" + spatial, "NC" + spatial)

    def conv(x, w):
        return lax.conv_general_dilated(x, w, strides, padding, lhs_dilation, rhs_dilation, numbers,
                                        feature_group_count=groups)

    compiled = jax.jit(conv).lower(jnp.ones(lhs), jnp.ones(rhs)).compile()
    traffic = HloTraffic(compiled.as_text())
    counted = [traffic.flops(comp, inst) for comp in traffic.comps.values()
               for inst in comp.instructions.values() if inst.opcode == "convolution"]
    assert len(counted) == 1
    assert counted[0] == compiled.cost_analysis()["flops"]
