"""A task and a reward a tiny policy learns in seconds, for the learning tests (tests/rl/test_learning.py).

Imported by the test process (the task registers for data generation and the held-out set) and by the reward
workers through `reward_pool.import_modules` (the reward registers there).

- task `probe_copy`: the prompt "copy X" with X one of 8 letters that the chat template does not use
  (level 1; level 2 draws from 6 others, so a held-out set at difficulty 2 never repeats a training
  prompt); the answer and worked solution are X.
  SFT learns to copy X: the completion is predictable only from the prompt.
- reward `probe_lowercase`: 1.0 when the completion starts with a lowercase ASCII letter. 29% of the pieces
  of the tests' 352-piece vocabulary (byte fallback included) qualify, so a random policy earns ~0.3 and
  GRPO has signal in most groups of a one-token completion.
"""

import string

from r1jax.rl.rewards import register_reward
from r1jax.rl.tasks import Problem, Task, register_task

LOWERCASE = frozenset(string.ascii_lowercase)


@register_task
class ProbeCopy(Task):
    name = "probe_copy"
    levels = {1: {"letters": "bdfghjkl"}, 2: {"letters": "mqvwxz"}}

    def generate(self, seed: int, index: int) -> Problem:
        letter = self.rng(seed, index).choice(self.knobs["letters"])
        return Problem(self.name, f"copy {letter}", letter, letter, self.difficulty)

    def verify(self, candidate: str, reference: str, prompt: str = "") -> bool:
        return candidate.strip() == reference


@register_reward("probe_lowercase")
def probe_lowercase(item, config) -> float:
    text = item.completion.strip()
    return float(bool(text) and text[0] in LOWERCASE)
