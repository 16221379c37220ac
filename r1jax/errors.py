"""The error type for bad user input, shared by every r1jax package.

The CLI prints a UserError as one clean line (exit code 2); its message names the culprit: the config key,
data file and row, checkpoint path or CLI argument.
"""


class UserError(ValueError):
    """Bad input from the user (config, data row, checkpoint, CLI argument); the message names it."""


class Interrupted(KeyboardInterrupt):
    """A signal stopped a command (SIGTERM from a job's time limit or `timeout`, SIGINT): it stops as Ctrl-C
    does, with the signal's number (exit 128 + it), after its clean-up (rl.cli.common.sigterm_interrupts)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
