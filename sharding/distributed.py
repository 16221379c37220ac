"""Several JAX processes (hosts) as one run: start-up, bounded waits for peers, host copies of global arrays.

`Launch.resolve(...)` reads the coordinator address, process count and process id from flags or the
environment (R1JAX_COORDINATOR, R1JAX_NUM_PROCESSES, R1JAX_PROCESS_ID, R1JAX_DISTRIBUTED=auto,
R1JAX_PEER_TIMEOUT_S); `initialize(launch)` starts `jax.distributed` before JAX touches a device. `auto` lets
JAX detect the cluster (Cloud TPU VM, Slurm, Open MPI).

Every process runs the same program on the same host values: JAX takes a host array given to a jitted
function or to `device_put` onto a global sharding as the global value, so the trainer's host work
(tokenising, decoding, reward scoring) is replicated and its device work is sharded over all processes.

A peer that stops answering must not hang the others forever: `initialize` bounds start-up and JAX's
heartbeats by the peer timeout, and `barrier` waits at most that long, raising `PeerLost` naming the
processes that did not arrive (the coordination service reports them). Two cases end inside JAX instead, with
a fatal error after the same timeout: a peer that never starts ("RegisterTask ... Deadline Exceeded", no
name) and a silent peer while this process waits in a collective ("The following tasks are unhealthy
(stopped sending heartbeats): 1").

A process that stops on an error must not leave the others waiting for it either: sharding.peer_errors.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
import re
import sys
import time
from typing import Mapping, Optional

from r1jax.errors import UserError

ENV_COORDINATOR = "R1JAX_COORDINATOR"
ENV_NUM_PROCESSES = "R1JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "R1JAX_PROCESS_ID"
ENV_DISTRIBUTED = "R1JAX_DISTRIBUTED"
ENV_PEER_TIMEOUT = "R1JAX_PEER_TIMEOUT_S"
DEFAULT_PEER_TIMEOUT_S = 300.0
MAX_PEER_TIMEOUT_S = 1e6  # ~11.6 days (JAX takes whole seconds as a C integer: 1e300 overflowed it)
MAX_PROCESSES = 2**31 - 1  # JAX's process count and ids are int32

_peer_timeout_s = DEFAULT_PEER_TIMEOUT_S
_gathers = itertools.count()  # gather's rounds: every process counts its calls alike


class PeerLost(UserError):
    """Another process of the run stopped answering (stopped, hung or dead): this one cannot go on."""


@dataclasses.dataclass(frozen=True)
class Launch:
    coordinator: Optional[str] = None  # HOST:PORT of process 0's coordination service
    num_processes: Optional[int] = None
    process_id: Optional[int] = None
    auto: bool = False  # let jax.distributed detect the cluster (Cloud TPU, Slurm, Open MPI)
    peer_timeout_s: float = DEFAULT_PEER_TIMEOUT_S

    @property
    def enabled(self) -> bool:
        return self.auto or self.coordinator is not None

    @classmethod
    def resolve(cls, coordinator: Optional[str] = None, num_processes: Optional[int] = None,
                process_id: Optional[int] = None, mode: Optional[str] = None,
                peer_timeout_s: Optional[float] = None, environ: Mapping[str, str] = os.environ) -> "Launch":
        """Flags first, then the R1JAX_* environment variables; errors name the flag."""
        coordinator = coordinator or environ.get(ENV_COORDINATOR) or None
        num_processes = _int(num_processes, environ.get(ENV_NUM_PROCESSES), "--num-processes")
        process_id = _int(process_id, environ.get(ENV_PROCESS_ID), "--process-id")
        mode = mode or environ.get(ENV_DISTRIBUTED) or None
        timeout = peer_timeout_s
        if timeout is None:  # an empty variable is unset, as the others are
            try:
                timeout = float(environ.get(ENV_PEER_TIMEOUT) or DEFAULT_PEER_TIMEOUT_S)
            except ValueError:
                raise UserError(f"--peer-timeout-s: environment value {environ[ENV_PEER_TIMEOUT]!r} is not a "
                                "number") from None
        if mode not in (None, "auto"):
            raise UserError(f"--distributed {mode!r}: the only mode is 'auto' (give --coordinator otherwise)")
        if not 0 < timeout < math.inf:  # nan and inf too: JAX takes whole seconds
            raise UserError(f"--peer-timeout-s {timeout:g}: must be a finite number > 0")
        if timeout > MAX_PEER_TIMEOUT_S:  # JAX takes whole seconds as a C integer
            raise UserError(f"--peer-timeout-s {timeout:g}: must be at most {MAX_PEER_TIMEOUT_S:g} seconds")
        launch = cls(coordinator, num_processes, process_id, mode == "auto", timeout)
        launch._check()
        return launch

    def _check(self) -> None:
        if self.coordinator is not None:
            if not re.fullmatch(r"\[?[\w.:-]+\]?:\d+", self.coordinator):
                raise UserError(f"--coordinator {self.coordinator!r}: expected HOST:PORT")
            port = int(self.coordinator.rsplit(":", 1)[1])
            if not 1 <= port <= 65535:
                raise UserError(f"--coordinator {self.coordinator!r}: port {port} is not in [1, 65535]")
        if self.auto:
            return
        given = [n for n, v in (("--num-processes", self.num_processes), ("--process-id", self.process_id))
                 if v is not None]
        if self.coordinator is None:
            if given:
                raise UserError(f"{' and '.join(given)} without --coordinator HOST:PORT (or --distributed auto)")
            return
        if len(given) < 2:
            raise UserError("--coordinator needs --num-processes N and --process-id I (or the environment "
                            f"variables {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID})")
        if self.num_processes < 1:
            raise UserError(f"--num-processes {self.num_processes}: expected at least 1")
        if not 0 <= self.process_id < self.num_processes:
            raise UserError(f"--process-id {self.process_id} is not in [0, {self.num_processes}) "
                            f"(--num-processes {self.num_processes})")
        if self.num_processes > MAX_PROCESSES:
            raise UserError(f"--num-processes {self.num_processes}: expected at most {MAX_PROCESSES} (2^31-1)")


def _int(flag: Optional[int], env: Optional[str], name: str) -> Optional[int]:
    if flag is not None:
        return flag
    if env in (None, ""):
        return None
    try:
        return int(env)
    except ValueError:
        raise UserError(f"{name}: environment value {env!r} is not an integer") from None


def initialize(launch: Launch) -> None:
    """Start jax.distributed for `launch` (nothing for a single process). Must run before JAX uses a device."""
    global _peer_timeout_s
    _peer_timeout_s = launch.peer_timeout_s
    if not launch.enabled:
        return
    import jax

    # CPU processes reach each other's devices through gloo; TPU/GPU collectives ignore this setting
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    seconds = max(1, math.ceil(launch.peer_timeout_s))
    try:
        jax.distributed.initialize(launch.coordinator, launch.num_processes, launch.process_id,
                                   initialization_timeout=seconds, heartbeat_timeout_seconds=seconds,
                                   shutdown_timeout_seconds=seconds)
    except (RuntimeError, ValueError) as err:  # e.g. auto-detection found no cluster
        hint = " (--distributed auto found no cluster: give --coordinator, --num-processes, --process-id)" \
            if launch.auto else ""
        raise UserError(f"jax.distributed.initialize failed: {first_line(err)}{hint}") from None
    if multi_process():
        from r1jax.sharding import peer_errors  # (which imports this module)

        peer_errors.watch()
        counts = {p: int(n) for p, n in gather("local-devices", str(jax.local_device_count()),
                                              "the start-up's device count check").items()}
        if len(set(counts.values())) > 1:
            shown = ", ".join(f"process {p}: {n}" for p, n in sorted(counts.items()))
            raise UserError(f"the processes hold different numbers of devices ({shown}): every process must hold "
                            "as many (hosts of one kind; the same --cpu-devices)")


def coordination_client():
    """jax.distributed's client of the coordination service (its key-value store and barriers), or None."""
    from r1jax.sharding.jax_private import distributed_client  # imports JAX, which this module defers

    return distributed_client()


def multi_process() -> bool:
    import jax

    return coordination_client() is not None and jax.process_count() > 1


def peer_timeout_s() -> float:
    """How long a process waits for a peer before it names it lost (--peer-timeout-s; default 300 s)."""
    return _peer_timeout_s


def several_processes() -> bool:
    """`multi_process()` without importing JAX: False when JAX has not started (no run has)."""
    return "jax" in sys.modules and multi_process()


def barrier(name: str, what: str, timeout_s: Optional[float] = None) -> None:
    """Wait until every process reaches `name`, at most `timeout_s` (default: the peer timeout); PeerLost
    names those missing. A longer timeout suits a wait on work only process 0 does; a dead peer is still
    caught by JAX's heartbeats within the peer timeout."""
    if not multi_process():
        return
    timeout_s = _peer_timeout_s if timeout_s is None else max(timeout_s, _peer_timeout_s)
    try:
        coordination_client().wait_at_barrier(f"r1jax/{name}", int(timeout_s * 1000))
    except Exception as err:  # JaxRuntimeError: DEADLINE_EXCEEDED, or a peer already reported dead
        raise PeerLost(describe_barrier_failure(str(err), what, timeout_s)) from None


def gather(name: str, text: str, what: str) -> dict[int, str]:
    """Every process's `text`, by process index, on every process (the coordination service's key-value store;
    one process: {0: text}). Every process must call it with the same `name`s in the same order."""
    if not multi_process():
        return {0: text}
    import jax

    # a round per call: a name may be gathered again
    client, key = coordination_client(), f"r1jax/{name}/{next(_gathers)}/"
    client.key_value_set(f"{key}{jax.process_index()}", text)
    barrier(f"{key}published", what)
    return {int(k.rsplit("/", 1)[1]): value for k, value in client.key_value_dir_get(key)}


def check_same(name: str, text: str, what: str) -> None:
    """Every process must hold the same `text` (e.g. the resolved config): UserError names those that differ."""
    if not multi_process():
        return
    import hashlib

    digests = gather(name, hashlib.sha256(text.encode()).hexdigest(), what)
    differ = sorted(p for p, digest in digests.items() if digest != digests[0])
    if differ:
        raise UserError(f"{what} of process{'es' if len(differ) > 1 else ''} {', '.join(map(str, differ))} "
                        "differs from process 0's: start every process with the same command")


def least(name: str, value: Optional[int], what: str) -> Optional[int]:
    """The smallest `value` over the processes (None from a process: no bound from it), the same on every
    process: a decision taken from it (the sampler's layout from free HBM) is every process's, where each
    process's own value could make them take different ones and wait forever in mismatched collectives."""
    values = [int(v) for v in gather(name, "" if value is None else str(value), what).values() if v]
    return min(values) if values else None


def check_shared_directory(directory, what: str, wait_s: float = 30.0) -> None:
    """Every process must see `directory` as the one process 0 writes (a run directory on a shared file
    system): process 0 writes a file of a fresh name into it, the others read it back, each for up to `wait_s`
    (a file system that caches what it lists, gcsfuse, may show a new file late). UserError on every process,
    naming those that do not see it (their writes would go to a directory nobody reads, and a resume would
    find another process's checkpoints missing)."""
    if not multi_process():
        return
    import pathlib
    import uuid

    import jax

    token = uuid.uuid4().hex if jax.process_index() == 0 else ""
    token = gather("shared-directory-name", token, f"{what}'s check")[0]
    path = pathlib.Path(directory) / f".r1jax-shared-{token}"
    if jax.process_index() == 0:
        path.write_text(token)
    barrier(f"shared-directory-written/{token}", f"{what}'s check")
    deadline = time.monotonic() + min(wait_s, _peer_timeout_s / 2)  # within the wait process 0 allows
    while True:
        try:
            seen = path.read_text() == token
        except OSError:
            seen = False
        if seen or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    sees = gather("shared-directory", "1" if seen else "", f"{what}'s check")
    if jax.process_index() == 0:
        path.unlink(missing_ok=True)
    differ = sorted(p for p, ok in sees.items() if not ok)
    if differ:
        raise UserError(f"{what} {directory} of process{'es' if len(differ) > 1 else ''} "
                        f"{', '.join(map(str, differ))} is not the directory process 0 writes: every process must "
                        "see one directory (a shared file system mounted at the same path on every host)")


def describe_barrier_failure(message: str, what: str, timeout_s: float) -> str:
    """A readable reason from the coordination service's barrier error, naming the missing processes."""
    missing = _missing_tasks(message)
    if missing:
        who = ", ".join(str(t) for t in missing)
        return (f"process{'es' if len(missing) > 1 else ''} {who} did not reach {what} within {timeout_s:g} s "
                "(stopped, hung or dead: see its log). Restart every process with the same command; the run "
                "resumes from its latest checkpoint")
    return f"the processes of this run lost each other at {what}: {first_line(message)}"


def _missing_tasks(message: str) -> list[int]:
    """Task ids after "timed out task names:" (plain ids or /job:.../task:N), or of unhealthy tasks."""
    match = re.search(r"(?:timed out task names|stopped sending heartbeats\)):\s*(.*?)(?:\n\s*\n|RPC:|$)",
                      message, re.S)
    if match:
        body = match.group(1)
        return sorted({int(t) for t in re.findall(r"task:(\d+)", body) or re.findall(r"^\s*(\d+)\s*$", body, re.M)})
    return sorted({int(t) for t in re.findall(r"Task (\d+) heartbeat timeout", message)})


def first_line(err) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def reached_preemption_sync_point(step: int) -> bool:
    """JAX's agreement on where to stop after a SIGTERM to any process: True on every process at the same
    step (the largest step any process had reached when the notice spread, plus one)."""
    if not multi_process():
        return False
    from jax.experimental import multihost_utils

    return multihost_utils.reached_preemption_sync_point(step)


def replicated(x):
    """`x` (a jax.Array) readable on every host: unchanged when it already is, else gathered to every device."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
        return x
    mesh = getattr(x.sharding, "mesh", None)
    if mesh is None:
        from jax.experimental import multihost_utils

        return jax.numpy.asarray(multihost_utils.process_allgather(x, tiled=True))
    return _reshard(x, NamedSharding(mesh, PartitionSpec()))


def _reshard(x, sharding):
    return identity_to(sharding)(x)


@functools.lru_cache(maxsize=None)
def identity_to(shardings):
    """A jitted identity whose outputs are laid out by `shardings` (a sharding or a hashable tree prefix of
    them), made once per `shardings`: the program is traced and compiled once, where a jit made at each call
    is traced and compiled again every time."""
    import jax

    return jax.jit(_identity, out_shardings=shardings)


def _identity(x):
    return x
