"""Entry point of the `r1jax` console script.

Subcommand modules import JAX lazily (inside `run`), so that the global `--cpu-devices` option can set
XLA's flags before JAX starts.
"""

from __future__ import annotations

import argparse
import atexit
import difflib
import gc
import importlib
import os
import shlex
import signal
import sys
import threading
import traceback

from r1jax.errors import UserError, out_of_memory
from r1jax.files import storage_failure, storage_remedy
from r1jax.rl.cli.common import cpu_device_count
from r1jax.rl.cli.compilation_cache import use_compilation_cache
from r1jax.rl.host_allocator import retain_freed_memory
# sharding.distributed defers JAX's import itself
from r1jax.sharding.distributed import PeerLost, first_line, several_processes
from r1jax.sharding.peer_errors import exit_if_a_peer_stopped, stop_on_error

# (name, module, one-line help). A module defines add_arguments(parser) and run(args) -> int.
COMMANDS = [
    ("info", "r1jax.rl.cli.info", "print a config's family and parameter counts as JSON"),
    ("init", "r1jax.rl.cli.init", "write a randomly initialised checkpoint"),
    ("train", "r1jax.rl.cli.train", "run a config's stages (SFT, GRPO, ...) into a run directory; resumes"),
    ("generate", "r1jax.rl.cli.generate", "sample completions from a checkpoint"),
    ("eval", "r1jax.rl.cli.eval", "evaluate a checkpoint: pass@1 over k samples, cons@k, pass@k"),
    ("score", "r1jax.rl.cli.score", "score saved completions with the training rewards (JSON lines out)"),
    ("tokenizer", "r1jax.rl.cli.tokenizer", "train the policy's sentencepiece tokenizer"),
    ("export-hf", "r1jax.rl.cli.export_hf", "export a checkpoint as a Hugging Face checkpoint (safetensors)"),
    ("export-gguf", "r1jax.rl.cli.export_gguf", "export a checkpoint as one GGUF file for llama.cpp"),
    ("import-hf", "r1jax.rl.cli.import_hf", "convert a Hugging Face checkpoint into an r1jax checkpoint"),
    ("compile", "r1jax.rl.cli.compile", "compile a GRPO step for a TPU slice on this host; report memory per chip"),
    ("bench", "r1jax.rl.cli.bench", "measure this machine: sampler, train step and MFU, reward pool, MoE, vs HF"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="r1jax",
        description="JAX/TPU-native GRPO trainer for mixture-of-experts policies (DeepSeek-R1 recipe).",
    )
    parser.add_argument(
        "--cpu-devices", type=cpu_device_count, metavar="N", default=None,
        help="fake N CPU devices (set before JAX starts) to run any command on a CPU mesh",
    )
    parser.add_argument(
        "--compilation-cache", metavar="DIR", default=None,
        help="JAX's persistent compilation cache: programs compiled once load from DIR in later runs (a resume "
             "skips recompiling); default $R1JAX_COMPILATION_CACHE, else $JAX_COMPILATION_CACHE_DIR, else "
             "~/.cache/r1jax/jax-compilation ($XDG_CACHE_HOME; at most 16 GiB); 'none': off",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name, help_text in COMMANDS:
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(name, help=help_text, description=module.__doc__)
        module.add_arguments(cmd)
        cmd.set_defaults(_module=module, _parser=cmd)
    return parser


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """`parser`'s parse_args, except that a command whose module sets INTERMIXED = True takes its positional
    arguments (a train's KEY=VALUE overrides) after its options too: argparse alone takes them only before."""
    misspelt = misspelt_before_command(parser, sys.argv[1:] if argv is None else list(argv))
    if misspelt:  # (`r1jax --cpu_devices 2 info` said "invalid choice: '2'": the value taken as the command)
        parser.error(misspelt)
    args, extra = parser.parse_known_args(argv)
    if not extra:
        return args
    argv = sys.argv[1:] if argv is None else list(argv)
    at = argv.index(args.command)  # the top-level options before it take no command-like value
    before = unknown_before_command(argv[:at], extra)
    if before:  # (`r1jax --cpu_devices=2 train ...` was dropped silently: a command taking KEY=VALUE parsed on)
        parser.error(f"unrecognized arguments before {args.command}: {' '.join(before)} (r1jax's own options: "
                     "--cpu-devices N, --compilation-cache DIR; a command's options go after its name)")
    own, moved = own_options_after_command(parser, argv[at + 1:], extra)
    if own:  # (`r1jax info tiny --cpu-devices 2` said only "unrecognized arguments")
        rest = [a for i, a in enumerate(argv[at + 1:]) if i not in own]
        given = [argv[at + 1 + i] for i in own]
        parser.error(f"{' '.join(given)}: r1jax's own option goes before the command"
                     f"{'' if given == moved else ', with its value'}: "
                     f"{shlex.join(['r1jax', *moved, args.command, *rest])}")
    typos = misspelt_options(parser, args._parser, extra)
    if typos:  # (`r1jax info tiny --cpu_devices 2` said only "unrecognized arguments: --cpu_devices 2")
        args._parser.error("; ".join(typos))
    if not getattr(args._module, "INTERMIXED", False):
        args._parser.error(f"unrecognized arguments: {' '.join(extra)}")  # names the command
    rest = argv[at + 1:]
    return argparse.Namespace(**{**vars(args), **vars(args._parser.parse_intermixed_args(rest))})


def unknown_before_command(prefix: list[str], extra: list[str]) -> list[str]:
    """The arguments of `extra` (parse_known_args' leftovers, in the order given) that came from `prefix`, the
    arguments before the command's name: argparse lists those first, so they are the leading run of `extra`
    found in `prefix` in order. Only options: a word there is taken as the command (--cpu-devices' value too)."""
    found = 0
    for argument in prefix:
        if found < len(extra) and argument.startswith("-") and argument == extra[found]:
            found += 1
    return extra[:found]


def _own_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: action for action in parser._actions for s in action.option_strings if s not in ("-h", "--help")}


def own_options_after_command(parser: argparse.ArgumentParser, after: list[str],
                              extra: list[str]) -> tuple[list[int], list[str]]:
    """(indices, moved): the indices in `after` (the arguments after the command's name) of r1jax's own options
    (--cpu-devices N, --cpu-devices=N) and their values, where parse_known_args left them unrecognized (`extra`):
    argparse takes them only before the command; and those arguments as they go before it, an option given no
    value followed by its metavar (`--cpu-devices N`: it would take the command's name as its value)."""
    own = _own_options(parser)
    found: list[int] = []
    moved: list[str] = []
    for i, argument in enumerate(after):
        action = own.get(argument.split("=", 1)[0])
        if action is None or argument not in extra or (found and i == found[-1]):
            continue
        found.append(i)
        moved.append(argument)
        if "=" not in argument and action.nargs != 0:
            if i + 1 < len(after) and not after[i + 1].startswith("-"):
                found.append(i + 1)  # its value
                moved.append(after[i + 1])
            else:
                moved.append(action.metavar or "VALUE")
    return found, moved


def misspelt_before_command(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """"unrecognized option --x: did you mean --y?" for the first option before the command that r1jax does not
    take but one of its own is close to (`--cpu_devices 2`), else None."""
    own = _own_options(parser)
    arguments = iter(argv)
    for argument in arguments:
        name = argument.split("=", 1)[0]
        if not name.startswith("--") or name == "--help":
            return None  # the command: what follows is the command's
        if name in own:
            if "=" not in argument and own[name].nargs != 0:
                next(arguments, None)  # its value
            continue
        close = difflib.get_close_matches(name, list(own), n=1, cutoff=0.8)
        return f"unrecognized option {name}: did you mean {close[0]}?" if close else None
    return None


def misspelt_options(parser: argparse.ArgumentParser, command: argparse.ArgumentParser,
                     extra: list[str]) -> list[str]:
    """For each unrecognized option in `extra` that is close to one the command or r1jax itself takes (a typo:
    `--cpu_devices`, `--run_dir`), "unrecognized option --x: did you mean --y?", saying where r1jax's own
    options go."""
    own = _own_options(parser)
    known = [*own, *_own_options(command)]
    hints = []
    for argument in extra:
        name = argument.split("=", 1)[0]
        if not name.startswith("--") or name in known:  # (a known option left over is argparse's to name)
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        if close:
            where = " (r1jax's own option: it goes before the command)" if close[0] in own else ""
            hints.append(f"unrecognized option {name}: did you mean {close[0]}{where}?")
    return hints


def fake_cpu_devices(count: int) -> None:
    """Make JAX see `count` CPU devices. Must run before JAX initialises its backends."""
    if count < 1:
        raise SystemExit(f"r1jax: --cpu-devices must be >= 1, got {count}")
    if "jax" in sys.modules:  # imported already: its config read the environment then, so set it here too
        import jax

        jax.config.update("jax_num_cpu_devices", count)
        jax.config.update("jax_platforms", "cpu")  # else an installed libtpu is probed (pages of TPU errors)
    flags = os.environ.get("XLA_FLAGS", "")
    flags = " ".join(f for f in flags.split() if not f.startswith("--xla_force_host_platform_device_count"))
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()
    os.environ["JAX_PLATFORMS"] = "cpu"


def pin_cpu_without_accelerators() -> None:
    """On a host with no TPU and no GPU attached, JAX still loads an installed libtpu (the `test` and `tpu`
    extras bring it), which prints pages of TPU-initialisation errors before falling back to the CPU. Pin
    the CPU backend there instead, with JAX's own hardware probe. JAX_PLATFORMS set by the user wins."""
    if os.environ.get("JAX_PLATFORMS") or os.environ.get("JAX_FORCE_TPU_INIT"):
        return
    import jax  # only now: JAX must start after the flags above are set (and not at all for --help)

    from r1jax.sharding.jax_private import accelerators_visible

    if accelerators_visible() is not False:  # attached, or a JAX without the probe: JAX chooses
        return
    os.environ["JAX_PLATFORMS"] = "cpu"
    jax.config.update("jax_platforms", "cpu")


def collect_garbage_less_often() -> None:
    """Python's cyclic garbage collector, tuned for a process that traces JAX programs: tracing allocates
    millions of short-lived objects, so the default thresholds (700, 10, 10) run a full collection over the
    whole heap (JAX, Flax, Orbax and their caches: 0.25 s each) every few seconds, and interpreter shutdown
    walks that heap once more. Gen-0 collections every 10,000 allocations in place of 700, and the heap frozen
    at exit (the process is ending: nothing left is worth a collection). An `r1jax train` of
    tests/rl/data/train_tiny.yaml, every program in the compilation cache: collections 2.7-3.4 s -> 1.1-1.3 s,
    exit after the last atexit handler 1.5-2.2 s -> 0.3-0.5 s (24.5-29.6 s -> 21.7-24.3 s wall, a loaded
    2-core host). Garbage is still collected, later: reference counting frees most of it at once anyway."""
    gc.set_threshold(10_000, 10, 10)
    atexit.register(gc.freeze)


def quiet_libraries() -> None:
    """Keep the console readable: library chatter (absl/Orbax/TensorFlow-style logs) only on errors."""
    import logging

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # read when JAX's C++ loads: set it first
    from r1jax.sharding.jax_private import BACKEND_LOGGER

    for name in ("absl", "orbax", BACKEND_LOGGER):
        logging.getLogger(name).setLevel(logging.ERROR)


def report_background_storage_failures(command: str) -> None:
    """A background writer the disk refuses (TensorBoard's event thread, its flush at exit, Orbax's closed
    loop) reports it as one line, once, not as a traceback: the command stops at its own next write, saying
    which file (main's handler below)."""
    previous_thread_hook, previous_unraisable_hook = threading.excepthook, sys.unraisablehook
    reported = set()

    def once(error: BaseException | None) -> bool:
        refused = storage_failure(error) if error is not None else None
        if refused and refused not in reported:
            reported.add(refused)
            print(f"r1jax {command}: error: {refused} (in a background writer)", file=sys.stderr, flush=True)
        return bool(refused)

    def thread_hook(args) -> None:
        if not once(args.exc_value):
            previous_thread_hook(args)

    def unraisable_hook(unraisable) -> None:
        if not once(unraisable.exc_value):
            previous_unraisable_hook(unraisable)

    threading.excepthook, sys.unraisablehook = thread_hook, unraisable_hook


def main(argv: list[str] | None = None, *, as_program: bool | None = None) -> int:
    """Run one command. `as_program` (default: when `argv` comes from the command line) says the process is
    the `r1jax` program, not a caller's (a test runner, a notebook): the malloc options and the collector's
    are process-wide, so only the program sets them, and the malloc options act best before JAX's backend
    starts. A script that wraps the program (tests/rl/signal_at_step.py) passes its own argv with True."""
    parser = build_parser()
    args = parse_arguments(parser, argv)
    if args.cpu_devices is not None:
        fake_cpu_devices(args.cpu_devices)
    pin_cpu_without_accelerators()
    if as_program is None:
        as_program = argv is None
    if as_program or args.compilation_cache is not None:  # process-wide: a caller's own setting stays
        try:
            use_compilation_cache(args.compilation_cache, args.command)
        except UserError as err:
            parser.error(str(err))
    if as_program and os.environ.get("JAX_PLATFORMS") == "cpu":
        retain_freed_memory()
    if as_program:
        collect_garbage_less_often()
        report_background_storage_failures(args.command)
    quiet_libraries()
    try:
        return int(args._module.run(args) or 0)
    except BrokenPipeError:  # the reader went away (`r1jax info | head`): no traceback, and none at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit would fail again
        return 1
    except PeerLost as err:  # exit now: a normal exit would wait for the lost peer in JAX's shutdown barrier
        print(f"r1jax {args.command}: error: {err}", file=sys.stderr, flush=True)
        stop_on_error(str(err), 3)
        os._exit(3)
    except KeyboardInterrupt as err:  # Ctrl-C (in train a second one: the first asks for a checkpoint) or a
        # SIGTERM a command turned into one (`Interrupted`, after its clean-up): one line, no traceback
        signum = getattr(err, "signum", signal.SIGINT)
        why = signal.Signals(signum).name if hasattr(err, "signum") else \
            "a second Ctrl-C" if args.command == "train" else "Ctrl-C"
        print(f"r1jax {args.command}: interrupted ({why})", file=sys.stderr, flush=True)
        if several_processes():  # the others must not wait for this one until the peer timeout, then abort
            stop_on_error(f"interrupted ({why})", 128 + signum)
        return 128 + signum
    except UserError as err:
        print(f"r1jax {args.command}: error: {err}", file=sys.stderr, flush=True)
        stop_on_error(str(err), 2)  # with several processes: the others stop too, naming this one's error
        return 2
    except Exception as err:  # a bug: with several processes, the others must not wait for this one
        message = not_a_bug(err, args.command)
        if message:  # the disk refused a write, or what was asked for does not fit: one line
            print(f"r1jax {args.command}: error: {message}", file=sys.stderr, flush=True)
            stop_on_error(message, 2)
            return 2
        if several_processes():
            exit_if_a_peer_stopped()  # (exits when this failure follows another process's stop)
            traceback.print_exc()
            stop_on_error(f"{type(err).__name__}: {first_line(err)} (the traceback is in its log)", 1)
        raise


def not_a_bug(err: BaseException, command: str) -> str | None:
    """The one line for an error that is no bug of r1jax's, or None: a write the disk refused (full, read-only:
    a checkpoint, metrics.jsonl, an export's file), or an allocation that does not fit."""
    refused = storage_failure(err)
    if refused:
        return (f"{refused[:600]}; {storage_remedy(err)}, then run again"
                + (" (`r1jax train --run-dir DIR` resumes from the last checkpoint)" if command == "train" else ""))
    if out_of_memory(err):
        return f"out of memory: {first_line(err)[:300]}; ask for fewer rows or tokens at once"
    return None


if __name__ == "__main__":
    sys.exit(main())
