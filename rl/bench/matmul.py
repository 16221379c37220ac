"""This machine's matmul peak, measured: one large jitted float32 matmul per local device, best of repeats.

Each of the D local devices multiplies its own [n, n] @ [n, n] (one [D, n, n] batch sharded over a 1-D mesh
of all local devices), so one call performs D * 2n^3 floating-point operations (n^2 outputs, each n
multiplies and n adds). The peak is that count over the fastest call's seconds: the figure MFU divides by.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from r1jax.rl.bench.timing import best_seconds


def matmul_flops(n: int) -> int:
    """Floating-point operations of one [n, n] @ [n, n] product."""
    return 2 * n**3


def sharded_operands(n: int, seed: int = 0):
    """Two [D, n, n] float32 arrays, D = local devices, one [n, n] slice on each device; and the matmul."""
    devices = jax.local_devices()
    sharding = NamedSharding(Mesh(np.array(devices), ("devices",)), P("devices"))
    shape = (len(devices), n, n)

    @jax.jit
    def make(key):
        a_key, b_key = jax.random.split(key)
        return jax.random.normal(a_key, shape, jnp.float32), jax.random.normal(b_key, shape, jnp.float32)

    a, b = jax.jit(make, out_shardings=(sharding, sharding))(jax.random.key(seed))
    matmul = jax.jit(lambda x, y: jnp.einsum("dij,djk->dik", x, y), out_shardings=sharding)
    return a, b, matmul


def peak_call(n: int = 4096):
    """(a no-argument function: one call of the sharded matmul, `peak_figures`' arguments but the seconds)."""
    a, b, matmul = sharded_operands(n)
    return (lambda: matmul(a, b)), (n, a.shape[0])


def peak_figures(n: int, devices: int, seconds: float) -> dict:
    """`matmul_peak_flops` (all local devices together) from the fastest call's `seconds`, with what it was
    measured on."""
    flops = devices * matmul_flops(n)
    return {"matmul_n": n, "matmul_devices": devices, "matmul_flops_per_call": flops,
            "matmul_seconds": seconds, "matmul_peak_flops": flops / seconds}


def matmul_peak(n: int = 4096, repeats: int = 3) -> dict:
    """`peak_figures` of the best of `repeats` calls."""
    call, shape = peak_call(n)
    return peak_figures(*shape, best_seconds(call, repeats=repeats))
