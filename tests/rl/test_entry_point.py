"""The `r1jax` console script loads nothing heavy at its top level: every process the program spawns runs the
script again as `__mp_main__` (multiprocessing's spawn start method), so a reward worker started under a script
importing rl.cli.main imported JAX, Flax and optax (~1.9 s and ~300 MB of its reward_pool.memory_mb: a math
worker could not start under 512 MB)."""

import pathlib
import subprocess
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def console_script(body: str) -> str:
    """pip's console-script wrapper for pyproject's `r1jax` entry point, running `body` as its main."""
    module, function = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["r1jax"].split(":")
    return f"import re\nimport sys\nfrom {module} import {function}\nif __name__ == '__main__':\n{body}"


def test_a_reward_worker_spawned_by_the_program_does_not_import_jax(tmp_path):
    script = tmp_path / "r1jax"
    script.write_text(console_script(
        "    from r1jax.rl.rewards import PoolConfig, RewardPool, RewardsConfig, ScoreItem\n"
        "    config = PoolConfig(workers=1, memory_mb=0, import_modules=('tests.rl.reward_probes',))\n"
        "    with RewardPool(RewardsConfig(names=('probe',), weights=(1.0,)), config, tasks=('arithmetic',)) as pool:\n"
        "        items = [ScoreItem(prompt='', completion=f'loaded:{name}', reference='0', task='math')\n"
        "                 for name in ('jax', 'r1jax.rl.rewards.functions')]\n"
        "        print([result.total for result in pool.score_batch(items)])\n"))
    run = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)})
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[-2:] == ["[0.0,", "1.0]"]  # no JAX in the worker; its rewards loaded (not vacuous)


def test_the_entry_points_module_imports_no_library():
    run = subprocess.run([sys.executable, "-c", console_script("    pass\n") + "print(sorted(m for m in sys.modules if "
                          "m.split('.')[0] in ('jax', 'flax', 'optax', 'numpy', 'orbax')))"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stdout + run.stderr
