"""The `r1jax` command line. Each subcommand is a module with `add_arguments` and `run`.

Subcommand modules import the library inside `run`, not at the top: `main` imports every subcommand module to
build the parser, and JAX must start only after `main` has set its flags (`--cpu-devices`, the CPU pin on
hosts without accelerators), and not at all for `--help`.
"""
