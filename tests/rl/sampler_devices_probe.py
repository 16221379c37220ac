"""`python -m tests.rl.sampler_devices_probe OUT SIGNAL STEP ARGS...` runs `r1jax ARGS...` as
tests/rl/signal_at_step.py does (SIGNAL after the row of global step STEP) and writes one JSON line to OUT per
event of a GRPO stage whose sampler has devices of its own (rl.sampler_devices), with the ids of the devices
its arrays live on:

- `reshard`: the weights (and key) moved into the sampler's layout, before a generation or an evaluation;
- `generate`: a generation of a batch sampled ahead dispatched (rl.train.stage_grpo._dispatch_draw), with the
  devices of the rollout it returns (put back on the trainer's mesh);
- `update`: an update about to be dispatched, with the devices of the trainer's state;
- `decode`: the host waiting for a batch's tokens to decode and submit them.

Only these functions are wrapped; the run is the real command line in a real process.
"""

import json
import signal
import sys

import jax

from r1jax.rl.cli.main import main
from r1jax.rl.sampler_layout import SamplerLayout
from r1jax.rl.train import stage_grpo
from r1jax.rl.train.update_stage import UpdateStage

from tests.rl.signal_at_step import signal_after_row


def device_ids(tree) -> list[int]:
    return sorted({d.id for x in jax.tree.leaves(tree) for d in x.devices()})


def watch(out_path: str) -> None:
    def log(event: str, tree=None) -> None:
        with open(out_path, "a") as f:
            f.write(json.dumps({"event": event, "devices": None if tree is None else device_ids(tree)}) + "\n")

    reshard, dispatch, submit, update = (SamplerLayout.reshard, stage_grpo.dispatch_sample,
                                         stage_grpo.submit_sample, UpdateStage.update)

    def watched_reshard(self, state):
        placed = reshard(self, state)
        log("reshard", placed)
        return placed

    def watched_dispatch(*args, **kwargs):
        generating = dispatch(*args, **kwargs)
        log("generate", generating.rollout)
        return generating

    def watched_submit(*args, **kwargs):
        log("decode")
        return submit(*args, **kwargs)

    def watched_update(self, batch, iterations=1, meanwhile=None):
        log("update", self.state)
        return update(self, batch, iterations, meanwhile)

    SamplerLayout.reshard, stage_grpo.dispatch_sample = watched_reshard, watched_dispatch
    stage_grpo.submit_sample, UpdateStage.update = watched_submit, watched_update


if __name__ == "__main__":
    watch(sys.argv[1])
    signal_after_row(signal.Signals[f"SIG{sys.argv[2]}"], int(sys.argv[3]))
    sys.exit(main(sys.argv[4:], as_program=True))
