"""Scoring split across JAX processes: each scores its share of the global batch, the results are exchanged.

Every process of a run does the same host work on the same global batch (rl.data.pipeline), so without a
share each would score every row: on a 64-host slice, code tests would run 64 times. With a share, process
p of P scores rows p, p + P, p + 2P, ... and publishes them in the coordination service's key-value store
(the one `jax.distributed.initialize` started) as JSON, which round-trips floats exactly; every process
then reads the others' and holds the whole batch's results, equal to what one process would compute.

Batches are named by a counter that advances identically on every process (the same host code submits the
same batches in the same order). A process deletes its key of batch k - 2 when it publishes batch k: every
peer has read it by then (a peer publishing batch k - 1 had finished reading batch k - 2).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from r1jax.sharding.distributed import PeerLost  # (imports no JAX)


@dataclasses.dataclass(frozen=True)
class ScoreShare:
    index: int  # this process
    count: int  # processes sharing the work
    timeout_s: float  # how long to wait for a peer's results
    client: Any  # jax.distributed's client: key_value_set, blocking_key_value_get, key_value_delete

    @classmethod
    def of_jax_processes(cls, timeout_s: float) -> "ScoreShare | None":
        """This JAX process's share, or None for a single process (or before jax.distributed starts)."""
        import jax  # here: reward workers import this package and must not load JAX

        from r1jax.sharding.jax_private import distributed_client

        client = distributed_client()
        if client is None or jax.process_count() == 1:
            return None
        return cls(jax.process_index(), jax.process_count(), timeout_s, client)

    def rows(self, size: int) -> range:
        """The rows of a `size`-row batch this process scores."""
        return range(self.index, size, self.count)

    def gather(self, batch: int, size: int, own: list[dict]) -> list[dict]:
        """Every row's result (JSON-able dicts, in row order) from this process's `own` (its `rows`)."""
        prefix = "r1jax/scores/{}/{}"
        self.client.key_value_set(prefix.format(batch, self.index), json.dumps(own))
        if batch >= 2:
            try:
                self.client.key_value_delete(prefix.format(batch - 2, self.index))
            except Exception:  # never published (a batch abandoned uncollected): nothing to free
                pass
        results: list = [None] * size
        for process in range(self.count):
            if process == self.index:
                part = own
            else:
                try:
                    text = self.client.blocking_key_value_get(prefix.format(batch, process),
                                                              int(self.timeout_s * 1000))
                except Exception as err:  # DEADLINE_EXCEEDED, or the coordination service gone with process 0
                    raise PeerLost(f"process {process} published no rewards of batch {batch} within "
                                   f"{self.timeout_s:.0f} s (its share of the scoring; it stopped, hung or died: "
                                   f"{str(err).splitlines()[0][:200] if str(err) else type(err).__name__})") from None
                part = json.loads(text)
            for row, result in zip(range(process, size, self.count), part):
                results[row] = result
        return results
