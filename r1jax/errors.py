"""The error type for bad user input, shared by every r1jax package.

The CLI prints a UserError as one clean line (exit code 2); its message names the culprit: the config key,
data file and row, checkpoint path or CLI argument. `error_chain` walks an error and those it was raised from or
during, where the culprit of a library's wrapped error is found; `out_of_memory` tells an allocation that did not
fit (no bug: the user asked for more rows or tokens at once than the memory holds).
"""

from typing import Iterator


class UserError(ValueError):
    """Bad input from the user (config, data row, checkpoint, CLI argument); the message names it."""


class Interrupted(KeyboardInterrupt):
    """A signal stopped a command (SIGTERM from a job's time limit or `timeout`, SIGINT): it stops as Ctrl-C
    does, with the signal's number (exit 128 + it), after its clean-up (rl.cli.common.sigterm_interrupts)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def error_chain(err: BaseException | None) -> Iterator[BaseException]:
    """`err`, then the errors it was raised from (`__cause__`) or during (`__context__`), each once."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def out_of_memory(err: BaseException) -> bool:
    """XLA's allocation failure (a JaxRuntimeError saying RESOURCE_EXHAUSTED or "Out of memory"), or the host's
    (a MemoryError: numpy's copy of a device array, e.g. eval's completions of 1024 samples x 10^6 new tokens)."""
    text = str(err)
    return isinstance(err, MemoryError) or (
        type(err).__name__ == "JaxRuntimeError" and ("RESOURCE_EXHAUSTED" in text or "Out of memory" in text))
