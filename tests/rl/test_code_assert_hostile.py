"""Programs that forge or bend the assert mode's conversation with its judge (rl/rewards/sandbox_judge.py,
sandbox_runner.py, sandbox_values.py), each compared with the same program and test in plain Python: before its
fix each crashed the judge or passed a test that Python fails."""

import json
import shutil

import pytest

from r1jax.rl.rewards import CodeConfig, ScoreItem, sandbox_values
from r1jax.rl.rewards.code import code_outcome

LIMITS = dict(wall_s=3.0, cpu_s=2, memory_mb=256, processes=16, file_mb=1, output_bytes=65536, tmp_mb=16)
MODES = [pytest.param("bwrap", marks=pytest.mark.skipif(shutil.which("bwrap") is None, reason="no bwrap")),
         "rlimits_only"]


def outcome(program: str, tests: list[str], mode: str):
    item = ScoreItem("", f"```python\n{program}\n```", "", "code", tests=json.dumps(tests), entry_point="f")
    result = code_outcome(item, CodeConfig(**LIMITS, sandbox=mode, partial=True))
    return result.passed, result.total, result.status


# The program's process rewrites its own copy of the runner's write_all to add a name to its "ready" line whose
# float.hex is past a float's range (float.hex never writes one; any program can write any line to its pipe).
FORGED_READY = ("import sys\n_judging = sys.modules['sandbox_judge']\n_write = _judging.write_all\n"
                "def _forge(fd, data):\n    head = b'[\"ready\", ['\n    if data.startswith(head):\n"
                "        data = head + b'[\"value\", \"x\", [\"float\", \"0x1p+99999\"]], ' + data[len(head):]\n"
                "    _write(fd, data)\n_judging.write_all = _forge\ndef f(x):\n    return 2 * x\n")


@pytest.mark.parametrize("mode", MODES)
def test_a_float_past_a_floats_range_in_the_programs_names_is_skipped_not_a_judges_traceback(mode):
    """decode raised OverflowError, which the judge reading the program's names did not catch: a traceback, and
    the run 'crashed' before its tests; the name is now skipped as any unreadable one is and the tests run."""
    with pytest.raises(ValueError, match="past a float's range"):
        sandbox_values.decode(["float", "0x1p+99999"])
    with pytest.raises(ValueError, match="past a float's range"):
        sandbox_values.decode(["complex", "0x0p+0", "-0x1p+99999"])
    assert sandbox_values.decode(["float", "0x1p+1023"]) == 2.0 ** 1023
    assert outcome(FORGED_READY, ["assert f(2) == 4", "assert f(3) == 5"], mode) == (1, 2, "failed")
