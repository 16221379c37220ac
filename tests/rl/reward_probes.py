"""A reward that misbehaves on command, for the pool tests (loaded into workers via import_modules).

The completion is the command:
- "sleep:SECONDS": sleep, then score 1.0;
- "barrier:DIR:N": 1.0 once N items run at the same time, each in its own process (0.0 after 1.5 s);
- "sigkill": the worker kills itself; "hog": allocate 8 GiB; "raise": raise ValueError;
- "nan" / "inf": return that float; "exit": call sys.exit(3);
- "env": 1.0 when the worker's accelerators are hidden;
- "clock": the time (time.time()) at which the worker scored it;
- "tower:LATEX": math-verify on LATEX with no screen and no timeout, the unguarded path that hangs in GMP;
- "loaded:MODULE": 1.0 when the worker has imported MODULE;
- anything else: 1.0.
"""

import os
import signal
import sys
import time

from r1jax.rl.rewards import register_reward


@register_reward("probe")
def probe(item, config) -> float:
    command = item.completion
    if command.startswith("sleep:"):
        time.sleep(float(command[len("sleep:"):]))
    elif command.startswith("barrier:"):
        return barrier(*command[len("barrier:"):].rsplit(":", 1))
    elif command == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif command == "hog":
        return float(len(bytearray(8 << 30)))
    elif command == "raise":
        raise ValueError("probe asked to raise")
    elif command in ("nan", "inf"):
        return float(command)
    elif command == "exit":
        sys.exit(3)
    elif command == "env":
        return float(os.environ.get("JAX_PLATFORMS") == "cpu" and os.environ.get("CUDA_VISIBLE_DEVICES") == ""
                     and os.environ.get("TPU_VISIBLE_CHIPS") == "")
    elif command == "clock":
        return time.time()
    elif command.startswith("loaded:"):
        return float(command[len("loaded:"):] in sys.modules)
    elif command.startswith("tower:"):
        from math_verify import LatexExtractionConfig, parse, verify

        config = [LatexExtractionConfig()]
        gold = parse("$1$", config, parsing_timeout=None)
        return float(verify(gold, parse(command[len("tower:"):], config, parsing_timeout=None),
                            timeout_seconds=None))
    return 1.0


def barrier(directory: str, count: str) -> float:
    open(os.path.join(directory, str(os.getpid())), "w").close()
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        if len(os.listdir(directory)) >= int(count):
            return 1.0
        time.sleep(0.01)
    return 0.0


@register_reward("broken")
def broken(item, config) -> float:
    """A reward whose every call fails (a bug in a user's reward): no completion is ever scored."""
    raise KeyError("answer")
