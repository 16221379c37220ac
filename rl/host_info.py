"""What a run or a measurement ran on: JAX's backend and devices, and the CPU with its widest vector
instructions. XLA compiles CPU code for the host's instruction set, which orders float sums differently, so a
CPU run's numbers are reproducible on one instruction set, not across them (benchmarks/HISTORY.md: the default
run on an AVX2 machine); results name it."""

from __future__ import annotations

import os
import platform
from typing import Iterable

import jax

# the widest first: the first of these a CPU lists names its vector instructions (x86, then Arm)
VECTOR_ISAS = ("amx_bf16", "avx512_bf16", "avx512f", "avx2", "avx", "sse4_2", "sve2", "sve", "asimd")


def vector_isa(flags: Iterable[str]) -> str | None:
    """The widest vector instruction set among a CPU's feature flags (`/proc/cpuinfo`), or None."""
    have = set(flags)
    return next((isa for isa in VECTOR_ISAS if isa in have), None)


def cpu_model_and_flags(path: str = "/proc/cpuinfo") -> tuple[str | None, tuple[str, ...]]:
    """(model name, feature flags) of the first CPU in a Linux cpuinfo file; elsewhere (model or None, ())."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return platform.processor() or None, ()
    model, flags = None, ()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and model is None:
            model = value.strip()
        elif key in ("flags", "features") and not flags:  # x86 / Arm
            flags = tuple(value.split())
    return model, flags


def host_info() -> dict:
    devices = jax.local_devices()
    model, flags = cpu_model_and_flags()
    return {"backend": jax.default_backend(), "device_kind": devices[0].device_kind,
            "local_devices": len(devices), "processes": jax.process_count(), "cpu_count": os.cpu_count(),
            "cpu_model": model, "cpu_vector_isa": vector_isa(flags), "jax_version": jax.__version__}
