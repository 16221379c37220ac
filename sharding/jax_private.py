"""The private JAX APIs r1jax relies on, in one place; nothing else in the project imports `jax._src`.

JAX may move or change these in any release. tests/sharding/test_jax_private.py exercises each one as the
project uses it, so an upgrade that breaks one fails that test rather than a run.

- `distributed_client()`: the coordination-service client `jax.distributed.initialize` starts (None before):
  named barriers with a timeout (`wait_at_barrier`) and a key-value store (`key_value_set`,
  `key_value_dir_get`), which JAX has no public API for (sharding.distributed).
- `accelerators_visible()`: JAX's own probe for attached TPU chips and GPUs, which reads the host's devices
  without starting a backend (rl.cli.main pins the CPU backend on a host without accelerators).
- `BACKEND_LOGGER`: the logger JAX's backend set-up writes its platform warnings to.

Importing this module imports JAX: modules that defer JAX (the CLI, sharding.distributed) import it where
they import JAX.
"""

from __future__ import annotations

from jax._src import distributed as _distributed

try:  # JAX's hardware probe; without it the CLI leaves the backend choice to JAX
    from jax._src import hardware_utils as _hardware_utils
except ImportError:
    _hardware_utils = None

BACKEND_LOGGER = "jax._src.xla_bridge"


def distributed_client():
    """The coordination-service client of this process's `jax.distributed.initialize`, or None before it."""
    return _distributed.global_state.client


def accelerators_visible() -> bool | None:
    """Whether a TPU chip, an NVIDIA GPU or an AMD GPU is attached to this host, without starting a JAX
    backend; None when this JAX's probe is missing or has changed shape (then leave the choice to JAX)."""
    if _hardware_utils is None:
        return None
    try:
        tpu_chips, _ = _hardware_utils.num_available_tpu_chips_and_device_id()
        return bool(tpu_chips or _hardware_utils.has_visible_nvidia_gpu()
                    or _hardware_utils.num_available_amd_gpus(stop_at=1))
    except (AttributeError, TypeError, ValueError):
        return None
