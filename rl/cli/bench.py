"""Measure this machine: sampler prefill/decode tokens/s, GRPO train-step tokens/s and MFU against the
matmul peak measured in the same run, reward-pool verifications/s (1 vs N workers), MoE layer step at 8 vs
64 experts, decode step at cache position 128 vs 1024 and, with --against hf, HF transformers generate on
the same weights. Prints a table, or one JSON object with --json; every figure with its goal.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys


INTERMIXED = True  # KEY=VALUE overrides after the options too (rl.cli.main.parse_arguments)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="bench",
                        help="the model config: a preset (bench, tiny, ...) or a YAML path; default: bench")
    parser.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="dotted config overrides, e.g. model.num_hidden_layers=2")
    parser.add_argument("--against", choices=["hf"], default=None,
                        help="hf: also run HF transformers generate on the exported weights (needs torch and "
                             "transformers)")
    parser.add_argument("--json", action="store_true", help="print one JSON object with every figure")
    parser.add_argument("--quick", action="store_true",
                        help="tiny batches and few repeats: seconds, for tests (figures are not meaningful)")
    parser.add_argument("--workers", default=None,
                        help="reward-pool worker counts to compare, comma-separated; default: 1,<cpu count>")


def run(args: argparse.Namespace) -> int:
    from r1jax.errors import UserError
    from r1jax.rl.bench.report import FIGURES, with_goals
    from r1jax.rl.bench.suite import progress, run_bench
    from r1jax.rl.cli.common import sigterm_interrupts
    from r1jax.sharding.distributed import first_line

    workers = None
    if args.workers is not None:
        try:
            workers = [int(w) for w in args.workers.split(",")]
        except ValueError:
            raise UserError(f"--workers {args.workers!r}: expected comma-separated integers") from None
        if any(w < 1 for w in workers):
            raise UserError(f"--workers {args.workers!r}: worker counts must be >= 1")
        from r1jax.rl.rewards.config import PoolConfig

        for count in workers:  # before any measuring (the pool figures come last, minutes later)
            try:
                PoolConfig(workers=count)
            except UserError as err:
                raise UserError(f"--workers {args.workers!r}: {err}") from None
    if args.against == "hf":
        _require_hf()
    partial, section = {}, [""]

    def say(message: str) -> None:
        section[0] = message
        progress(message)

    try:
        with sigterm_interrupts():
            result = run_bench(args.preset, args.overrides, quick=args.quick, against_hf=args.against == "hf",
                               workers=workers, say=say, result=partial)
    except BaseException as err:  # a long run stopped (a job's time limit, Ctrl-C, a part's error): keep its figures
        if "device" not in partial:  # nothing measured yet
            raise
        interrupted = isinstance(err, KeyboardInterrupt)
        reason = "interrupted" if interrupted else f"{type(err).__name__}: {first_line(err)[:300]}"
        partial.update({f.key: partial.get(f.key) for f in FIGURES})  # each figure's key, null if not measured
        partial["incomplete"] = {"part": section[0], "reason": reason}
        partial["device"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        show(with_goals(partial), args.json)
        print(f"r1jax bench: stopped in '{section[0]}' ({reason}): the figures above were measured before it",
              file=sys.stderr, flush=True)
        if interrupted:
            return 128 + getattr(err, "signum", signal.SIGINT)
        raise
    show(result, args.json)
    return 0


def show(result: dict, as_json: bool) -> None:
    from r1jax.rl.bench.report import render_table

    if as_json:
        print(json.dumps(result, indent=2), flush=True)
    else:
        render_table(result)


def _require_hf() -> None:
    """Fail before any measuring when the HF comparison cannot run."""
    import importlib.util

    from r1jax.errors import UserError

    missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"--against hf needs {' and '.join(missing)}: pip install torch==2.13.0 "
                        f"'transformers>=5.24,<6' (the `test` extra's pins; or pip install -e '.[test]' in a "
                        f"source checkout)")
