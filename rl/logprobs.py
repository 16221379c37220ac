"""Per-token log-probs of a rollout under the current policy: what the GRPO loss recomputes.

Logits are divided by the sampling temperature before the log-softmax, exactly as the sampler scores its
tokens, so at equal weights the two agree to float rounding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from r1jax.model.decoder import Policy, PolicyOutput


def completion_logprobs(policy: Policy, tokens_BT: jax.Array, valid_BT: jax.Array, positions_BT: jax.Array,
                        prompt_length: int, temperature: float = 1.0,
                        replay_LBTK: jax.Array | None = None) -> tuple[jax.Array, PolicyOutput]:
    """log p(token_t | tokens_<t) for the completion columns t >= prompt_length: float32 [B, N]."""
    out = policy(tokens_BT, positions_BT, valid_BT, replay_LBTK)
    # the logits at column t - 1 predict the token at column t
    logits_BNV = out.logits_BTV[:, prompt_length - 1: -1].astype(jnp.float32)
    if temperature > 0:
        logits_BNV = logits_BNV / temperature
    logp_BNV = jax.nn.log_softmax(logits_BNV, axis=-1)
    targets_BN = tokens_BT[:, prompt_length:]
    return jnp.take_along_axis(logp_BNV, targets_BN[..., None], axis=-1)[..., 0], out
