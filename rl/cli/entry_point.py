"""The `r1jax` console script's entry point (pyproject.toml [project.scripts]), kept apart from rl.cli.main so
that importing it loads nothing: the script imports it at its top level, and every process the program spawns
(the reward pool's workers, a replacement for each one recycled or killed at its timeout) runs the script again
as `__mp_main__` before its own code. With rl.cli.main there each worker imported JAX, Flax and optax (~1.9 s and
~300 MB of address space under reward_pool.memory_mb, and before it hid the accelerators). `python -m r1jax`
needs no such care: multiprocessing does not run a package's __main__ again."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    from r1jax.rl.cli.main import main as run_command

    return run_command(argv)
