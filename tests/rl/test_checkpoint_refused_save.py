"""A checkpoint save (`r1jax init`, `import-hf`: rl.checkpoint.save_policy) that the file system refuses leaves
nothing and says one line: Orbax's item threads still wrote after the first item's error surfaced, so the
partial step reappeared after it was taken back (the next try refused: "exists and is not empty") and their
writes died at the interpreter's exit on a traceback ("cannot schedule new futures after interpreter
shutdown"). A file-size limit of 0 bytes (RLIMIT_FSIZE) refuses every write as a full disk does (directories
are still made, as on a full tmpfs), without root or a mount; it needs its own process."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import os, resource, signal, sys, threading, time
    from r1jax.errors import UserError
    from r1jax.model.factory import init_policy
    from r1jax.rl.checkpoint import save_policy
    from r1jax.rl.config import load_config

    config = load_config("tiny", ["model.num_hidden_layers=1"])
    policy = init_policy(config.model, 0)
    mkdir = os.mkdir

    def slow_mkdir(path, *args, **kwargs):  # a slow disk: the params item's directory comes after the error
        if os.fspath(path).endswith("params.orbax-checkpoint-tmp"):
            time.sleep(0.5)
        return mkdir(path, *args, **kwargs)

    os.mkdir = slow_mkdir
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    for out in sys.argv[1:]:
        try:
            save_policy(out, config, policy)
        except UserError as err:
            print(str(err).splitlines()[0], file=sys.stderr)
        writing = sorted(t.name for t in threading.enumerate() if type(t).__module__.startswith("orbax"))
        print("writing after the error:", writing, flush=True)
""")


def test_a_refused_save_waits_for_its_writers_leaves_nothing_and_says_one_line(tmp_path):
    outs = [tmp_path / f"ck{i}" for i in range(3)]  # each try raced Orbax's threads: one left them on most runs
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    run = subprocess.run([sys.executable, "-c", SCRIPT, *map(str, outs)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.splitlines() == ["writing after the error: []"] * len(outs), run.stdout
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == len(outs) and all("cannot be written: file too large" in line.lower() for line in lines), \
        run.stderr[-3000:]
    assert sorted(tmp_path.iterdir()) == [], sorted(tmp_path.rglob("*"))


TRAINER_SCRIPT = textwrap.dedent("""
    import resource, signal, sys, threading
    import numpy as np
    from r1jax.rl.config import Config
    from r1jax.rl.train.checkpointing import TrainCheckpointer

    checkpointer = TrainCheckpointer(sys.argv[1], keep=2, keep_best=0)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    checkpointer.save(1, Config(), {"params": {"w": np.ones((64, 64), np.float32)}}, {"step": 1})
    try:
        checkpointer.close()
    except OSError as err:
        print("close raised:", err.strerror, flush=True)
    print("writing after close:", sorted(t.name for t in threading.enumerate() if t is not threading.main_thread()),
          flush=True)
""")


def test_the_trainers_refused_save_closes_its_manager_and_exits_cleanly(tmp_path):
    """The trainer's checkpointer closed its manager only after a save in flight succeeded: a refused one left
    the manager open, its threads wrote on, the process printed "cannot schedule new futures after interpreter
    shutdown" tracebacks at exit or hung there (2 of 3 runs)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    run = subprocess.run([sys.executable, "-c", TRAINER_SCRIPT, str(tmp_path / "ck")], capture_output=True,
                         text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.splitlines() == ["close raised: File too large", "writing after close: []"], run.stdout
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
