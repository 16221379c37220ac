"""What runs inside a reward worker process (spawned, never forked: the trainer runs JAX threads).

`initialize` runs once per worker before any task: it hides accelerators (JAX_PLATFORMS=cpu, no visible
CUDA/ROCm/TPU devices) so nothing in a worker can claim a chip the trainer owns, caps the address space
(RLIMIT_AS) so a runaway allocation fails here and not in the host, ignores SIGINT and SIGHUP (the trainer decides
when workers stop), makes itself non-dumpable (PR_SET_DUMPABLE 0: a program run as the same user, in
`rlimits_only` mode without root, can then neither read its /proc/PID/environ nor write its /proc/PID/mem),
puts its programs' run directories under the pool's (rl.rewards.sandbox_dirs.set_run_root), and imports the
modules that register custom rewards and tasks.

`score` never raises: it returns (status, rewards, error, pid, code status or None: rl.rewards.code). Out of memory
is the exception to the rule: the worker exits with OOM_EXIT_CODE (its state may be damaged), the pool reports the
item as crashed and starts a fresh worker.
"""

from __future__ import annotations

import importlib
import logging
import os
import resource
import signal
import sys
from typing import Sequence

OOM_EXIT_CODE = 75
HIDDEN_DEVICES_ENV = {
    "JAX_PLATFORMS": "cpu",
    "CUDA_VISIBLE_DEVICES": "",
    "HIP_VISIBLE_DEVICES": "",
    "ROCR_VISIBLE_DEVICES": "",
    "TPU_VISIBLE_CHIPS": "",
    "TPU_VISIBLE_DEVICES": "",
    "TPU_PROCESS_BOUNDS": "",
    "TPU_CHIPS_PER_PROCESS_BOUNDS": "",
}


def initialize(memory_mb: int, modules: Sequence[str], tasks: Sequence[str] | None = None,
               run_root: str | None = None) -> None:
    os.environ.update(HIDDEN_DEVICES_ENV)
    # Ctrl-C and a closed terminal's SIGHUP reach the whole job: the trainer checkpoints at either, after the step
    # whose items these workers score (a worker killed by SIGHUP scored its item "crashed", 0, in that step)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    set_not_dumpable()
    if memory_mb:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if run_root is not None:
        from r1jax.rl.rewards.sandbox_dirs import set_run_root

        set_run_root(run_root)
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its "timeout disabled" notice, per worker
    try:
        # project modules load only after the accelerators are hidden above, here and in the functions below
        import r1jax.rl.rewards.functions  # noqa: F401  (the built-in rewards and tasks)

        for name in modules:
            importlib.import_module(name)
        _warm_up(tasks)
    except BaseException as err:  # pebble would log the traceback and start no worker: say why in one line
        print(f"r1jax reward worker {os.getpid()}: {start_failure(err, memory_mb)}", file=sys.stderr, flush=True)
        os._exit(1 if _failed_allocation(err) is None else OOM_EXIT_CODE)


def start_failure(err: BaseException, memory_mb: int) -> str:
    """Why a worker could not load its modules, naming the setting to change."""
    allocation = _failed_allocation(err)
    what = f"{type(allocation or err).__name__}: {allocation or err}".splitlines()[0][:300]
    if memory_mb and allocation is not None:
        return (f"cannot load its rewards and verifiers within reward_pool.memory_mb = {memory_mb} MB of address "
                f"space ({what}); raise it (default 2048; 0: no limit)")
    return f"failed to load its rewards, verifiers and reward_pool.import_modules ({what})"


def _failed_allocation(err: BaseException | None) -> BaseException | None:
    """`err`, or the error it was raised from or while handling, that is an allocation that failed (a
    MemoryError, or a shared library the dynamic loader could not map: an ImportError); None if none is."""
    from r1jax.errors import error_chain

    for link in error_chain(err):
        text = str(link).lower()
        if isinstance(link, MemoryError) or "failed to map segment" in text or "cannot allocate memory" in text:
            return link
    return None


def set_not_dumpable() -> None:
    """prctl(PR_SET_DUMPABLE, 0): /proc/PID/{environ,mem,...} of this process become root's, ptrace is refused to
    the same user. A no-op where there is no prctl (not Linux)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # 4: PR_SET_DUMPABLE
    except (ImportError, OSError, AttributeError):
        pass


def _warm_up(tasks: Sequence[str] | None) -> None:
    """Load what the verifiers of `tasks` (None: every registered task) need now, so that a fresh worker's first
    item is not charged for it (math and algebra: sympy and math-verify, ~1 s of imports)."""
    from r1jax.rl.tasks import TASKS, Task, get_task

    for name in TASKS if tasks is None else tasks:
        if TASKS[name].warm_up is not Task.warm_up:  # (the others have nothing to load)
            get_task(name).warm_up()


def score(item, config) -> tuple[str, dict, str | None, int, str | None]:
    from r1jax.rl.rewards.code import code_outcome
    from r1jax.rl.rewards.functions import score_item

    try:
        rewards = score_item(item, config)
        ran_code = item.tests is not None and "code" in config.names
        code_status = code_outcome(item, config.code).status if ran_code else None  # cached: no second run
        return "ok", rewards, None, os.getpid(), code_status
    except MemoryError:
        os._exit(OOM_EXIT_CODE)
    except BaseException as err:  # a bug in a reward or verifier (sys.exit() too): this item fails, the worker
        return "error", {}, f"{type(err).__name__}: {err}"[:500], os.getpid(), None  # goes on


def ping() -> int:
    return os.getpid()
