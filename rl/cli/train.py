"""Train: run a config's stages (tokenizer, cold-start SFT, GRPO, ...) into a run directory.

With --run-dir on an existing run, resume from its latest checkpoint: without CONFIG under the run's saved
config.yaml, with CONFIG under that config; overrides apply on top either way; what differs from the
checkpoint's config is logged, and an architecture change refused. SIGTERM/SIGINT/SIGHUP checkpoint and exit 0.

Several processes (hosts) run one job when each is started with the same command plus --coordinator
HOST:PORT --num-processes N --process-id I (or R1JAX_COORDINATOR / R1JAX_NUM_PROCESSES / R1JAX_PROCESS_ID),
or --distributed auto on a Cloud TPU VM; they share one --run-dir. A SIGTERM to any of them stops all at the
same step with a checkpoint; a process that stops answering fails the others within --peer-timeout-s.
"""

from __future__ import annotations

import argparse
import pathlib
import time

from r1jax.rl.cli.common import check_creatable, split_config_and_overrides

DEFAULT_CONFIG = "tiny"
INTERMIXED = True  # KEY=VALUE overrides after the options too: `r1jax train CFG --run-dir D key=value`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", default=None,
                        help="preset name or YAML path (default: tiny; on an existing --run-dir: its config.yaml)")
    parser.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="dotted config overrides (before or after the options)")
    parser.add_argument("--run-dir", default=None,
                        help="run directory; an existing one resumes (default: runs/<config>-<time>)")
    hosts = parser.add_argument_group("several processes (hosts) as one run")
    hosts.add_argument("--coordinator", metavar="HOST:PORT", default=None,
                       help="process 0's address for jax.distributed (env R1JAX_COORDINATOR)")
    hosts.add_argument("--num-processes", type=int, metavar="N", default=None,
                       help="processes in the run (env R1JAX_NUM_PROCESSES)")
    hosts.add_argument("--process-id", type=int, metavar="I", default=None,
                       help="this process, 0 to N-1 (env R1JAX_PROCESS_ID)")
    hosts.add_argument("--distributed", choices=["auto"], default=None,
                       help="auto: JAX detects the cluster (Cloud TPU VM, Slurm, Open MPI; env R1JAX_DISTRIBUTED)")
    hosts.add_argument("--peer-timeout-s", type=float, metavar="S", default=None,
                       help="how long to wait for another process (start-up, heartbeats, each step) before "
                            "failing with its name (default 300; env R1JAX_PEER_TIMEOUT_S)")


def run(args: argparse.Namespace) -> int:
    from r1jax.errors import UserError
    from r1jax.sharding import distributed

    launch = distributed.Launch.resolve(args.coordinator, args.num_processes, args.process_id, args.distributed,
                                        args.peer_timeout_s)
    if args.run_dir is not None and "://" in args.run_dir:
        raise UserError(f"--run-dir {args.run_dir}: the run directory is written with local file APIs; mount the "
                        "bucket on every host (Cloud Storage FUSE: gcsfuse) and pass the mount path")
    several = "--run-dir is required with several processes: they all write one run directory"
    if args.run_dir is None and (launch.num_processes or 1) > 1:  # before start-up waits for the peers
        raise UserError(several)
    distributed.initialize(launch)  # before anything touches a JAX device
    import jax

    if jax.process_count() > 1 and args.run_dir is None:  # --distributed auto: the count is known only now
        raise UserError(several)
    if jax.process_count() > 1:
        from r1jax.rl.cli.compilation_cache import share_with_the_slice

        share_with_the_slice(pathlib.Path(args.run_dir))
    return _train(args, primary=jax.process_index() == 0)


def _train(args: argparse.Namespace, primary: bool) -> int:
    from r1jax.errors import UserError
    from r1jax.rl.config import load_config, to_yaml
    from r1jax.rl.train.console import RunConsole, silence_libraries
    from r1jax.rl.train.trainer import Trainer
    from r1jax.sharding import distributed

    silence_libraries()
    name, overrides = (None, args.overrides) if args.config is None else split_config_and_overrides(
        args.config, args.overrides)
    if args.config is not None and name != args.config:  # `r1jax train key=value`: no config named
        name = None
    run_dir = pathlib.Path(args.run_dir) if args.run_dir else pathlib.Path(
        "runs") / f"{pathlib.Path(name or DEFAULT_CONFIG).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    named = f"--run-dir {str(run_dir)!r}" if args.run_dir else f"run directory {str(run_dir)!r}"
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{named} is a file; give a new run directory, or an existing one to resume")
    if not run_dir.exists():
        check_creatable(run_dir, named)
    saved = run_dir / "config.yaml"
    if name is None and not saved.exists() and run_dir.is_dir() and any(run_dir.iterdir()):
        # what a start refused before writing config.yaml leaves (its lock, an empty checkpoints/): a
        # resume here trained the default config
        raise UserError(f"{named} holds no config.yaml (no start there passed its checks), so there is no run to "
                        f"resume: name the config, r1jax train CONFIG --run-dir {str(run_dir)!r}")
    if name is None and saved.is_file() and not saved.read_bytes().strip():  # (a config file of the user's that is
        # empty means every default; the run's own, which r1jax writes whole, is damaged: a resume trained defaults)
        raise UserError(f"{str(saved)!r} is empty: it should hold the run's whole resolved config, so there is no "
                        f"config to resume under; name it, r1jax train CONFIG --run-dir {str(run_dir)!r}")
    # an existing run goes on under its own config unless the command names one (an edited file is read again)
    config = load_config(saved if saved.exists() and name is None else name or DEFAULT_CONFIG, overrides)
    distributed.check_same("config", to_yaml(config), "the resolved config")  # before process 0 writes it
    console = RunConsole(enabled=primary)
    console.log(f"run directory: {run_dir}")
    if saved.exists() or name is None:  # a fresh start with no CONFIG trains the default: said, as a mistyped
        # `--run-dir` meant as a resume starts the default run there
        source = name or ("the run's config.yaml" if saved.exists() else
                          f"{DEFAULT_CONFIG} (the default: no CONFIG named and no run to resume here)")
        console.log(f"config: {source}" + (f" with {' '.join(overrides)}" if overrides else ""))
    try:
        summary = Trainer(config, run_dir, console).run()
    except UserError:  # a refused start (a fresh run's directory is then taken back: it is gone, as it should be)
        raise
    except Exception as err:
        # each later write failed with a traceback (FileNotFoundError: metrics.jsonl); any other error is a bug
        # and keeps its traceback, the directory gone or not
        if not run_dir.is_dir() and _missing_under(err, run_dir):
            raise UserError(f"{named} was removed or moved while the run trained ({type(err).__name__}: "
                            f"{str(err)[:200]}): its checkpoints are where it went; resume it there with "
                            "`r1jax train --run-dir` and its new path, or move it back") from err
        raise
    _print_outcome(console, summary)
    return 0


def _missing_under(err: BaseException, run_dir: pathlib.Path) -> bool:
    """Whether `err` (or an error it was raised from or during) is an OSError naming a path in `run_dir`."""
    import os

    from r1jax.errors import error_chain

    root = os.path.abspath(run_dir)
    for link in error_chain(err):
        for name in (link.filename, link.filename2) if isinstance(link, OSError) else ():
            if isinstance(name, (str, bytes, os.PathLike)):
                path = os.path.abspath(os.fsdecode(name))
                if path == root or path.startswith(root.rstrip(os.sep) + os.sep):
                    return True
    return False


def _print_outcome(console, summary: dict) -> None:
    evals = summary.get("evals", [])
    for entry in evals:
        k = entry["k"]
        of_k = f"  cons@{k} {entry[f'cons@{k}']:.3f}  pass@{k} {entry[f'pass@{k}']:.3f}" if k > 1 else ""
        console.log(f"{entry['stage']:>12}: pass@1 {entry['pass@1']:.3f}{of_k}  format {entry['format_rate']:.2f}  "
                    f"({entry['n_problems']} held-out problems x {k})")
    if summary.get("stopped_at_step") is not None:
        console.log(f"stopped at step {summary['stopped_at_step']}; resume with --run-dir")
    elif summary.get("rl_gain"):
        from r1jax.rl.train.outcome import describe

        console.log(describe(summary["rl_gain"]))
