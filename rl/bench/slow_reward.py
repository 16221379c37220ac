"""`host_20ms`: a reward that costs 20 ms of host time per completion (a sleep, as a verifier or sandbox
that waits would), then scores 1 when the completion holds a digit, which a random policy's completions do
about half the time, so its groups have advantages to update on. Light to import: the reward pool's workers
load it through `reward_pool.import_modules` (rl.bench.staleness)."""

import time

from r1jax.rl.rewards import register_reward

SECONDS = 0.02


@register_reward("host_20ms")
def host_20ms(item, config) -> float:
    time.sleep(SECONDS)
    return float(any("0" <= c <= "9" for c in item.completion))
