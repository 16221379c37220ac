"""Train: run a config's stages (tokenizer, cold-start SFT, GRPO, ...) into a run directory.

With --run-dir on an existing run, resume from its latest checkpoint (the run's saved config is used;
overrides are applied on top and must not change the architecture). SIGTERM/SIGINT checkpoint and exit 0.
"""

from __future__ import annotations

import argparse
import pathlib
import time

from rl.cli.common import split_config_and_overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", default="tiny", help="preset name or YAML path (default: tiny)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    parser.add_argument("--run-dir", default=None,
                        help="run directory; an existing one resumes (default: runs/<config>-<time>)")


def run(args: argparse.Namespace) -> int:
    from rl.config import load_config
    from rl.train.console import RunConsole, silence_libraries
    from rl.train.trainer import Trainer

    silence_libraries()
    name, overrides = split_config_and_overrides(args.config, args.overrides)
    run_dir = pathlib.Path(args.run_dir) if args.run_dir else pathlib.Path(
        "runs") / f"{pathlib.Path(name).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    saved = run_dir / "config.yaml"
    config = load_config(saved if saved.exists() else name, overrides)
    console = RunConsole()
    console.log(f"run directory: {run_dir}")
    summary = Trainer(config, run_dir, console).run()
    _print_outcome(console, summary)
    return 0


def _print_outcome(console, summary: dict) -> None:
    evals = summary.get("evals", [])
    for entry in evals:
        k = entry["k"]
        console.log(f"{entry['stage']:>12}: pass@1 {entry['pass@1']:.3f}  cons@{k} {entry[f'cons@{k}']:.3f}  "
                    f"pass@{k} {entry[f'pass@{k}']:.3f}  format {entry['format_rate']:.2f}  "
                    f"({entry['n_problems']} held-out problems x {k})")
    if summary.get("stopped_at_step") is not None:
        console.log(f"stopped at step {summary['stopped_at_step']}; resume with --run-dir")
