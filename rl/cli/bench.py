"""Measure this machine: sampler prefill/decode tokens/s, GRPO train-step tokens/s and MFU against the
matmul peak measured in the same run, reward-pool verifications/s (1 vs N workers), MoE layer step at 8 vs
64 experts, decode step at cache position 128 vs 1024 and, with --against hf, HF transformers generate on
the same weights. Prints a table, or one JSON object with --json; every figure with its goal.
"""

from __future__ import annotations

import argparse
import json


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
    from r1jax.rl.bench.report import render_table
    from r1jax.rl.bench.suite import run_bench

    workers = None
    if args.workers:
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
    result = run_bench(args.preset, args.overrides, quick=args.quick, against_hf=args.against == "hf",
                       workers=workers)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        render_table(result)
    return 0


def _require_hf() -> None:
    """Fail before any measuring when the HF comparison cannot run."""
    import importlib.util

    from r1jax.errors import UserError

    missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"--against hf needs {' and '.join(missing)}: pip install -e '.[test]'")
