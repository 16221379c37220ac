"""The error type for bad user input, shared by every r1jax package.

The CLI prints a UserError as one clean line (exit code 2); its message names the culprit: the config key,
data file and row, checkpoint path or CLI argument.
"""


class UserError(ValueError):
    """Bad input from the user (config, data row, checkpoint, CLI argument); the message names it."""
