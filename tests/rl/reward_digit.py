"""A reward an untrained policy sometimes earns, so that a pipeline test keeps samples at a real threshold
(loaded into the trainer and its reward workers via reward_pool.import_modules)."""

from r1jax.rl.rewards import register_reward


@register_reward("has_digit")
def has_digit(item, config) -> float:
    """1 when the completion contains an ASCII digit: about half of a tiny arithmetic policy's 8-token samples."""
    return float(any("0" <= c <= "9" for c in item.completion))
