"""Train-step throughput of the jitted GRPO update (the trainer's own step) and its MFU.

The step runs on the config's mesh, state donated and laid out as the trainer lays it out, on a synthetic
batch of B rows of P prompt + N completion tokens (every position valid, completion tokens trained,
random advantages). With a KL term the reference log-probs are in the batch, as the trainer computes them
ahead of the step. MFU = `flops.train_step_flops` / step seconds / the measured matmul peak, the two timed in turns.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from r1jax.rl.bench.flops import train_step_flops
from r1jax.rl.bench.matmul import peak_call, peak_figures
from r1jax.rl.bench.timing import best_seconds_in_turns, threaded_call
from r1jax.rl.grpo.aggregation import global_normalisers, token_weights_BT
from r1jax.rl.grpo.optimizer import make_optimizer
from r1jax.rl.grpo.step import make_grpo_step
from r1jax.rl.update import init_train_state
from r1jax.sharding.mesh import check_batch_rows
from r1jax.sharding.params import tree_shardings


def synthetic_batch(config, rows: int, prompt_len: int, new_tokens: int, seed: int = 0) -> dict:
    """A GRPO training batch (rl.grpo.step's layout) of full-length random completions."""
    t = prompt_len + new_tokens
    keys = jax.random.split(jax.random.key(seed), 3)
    tokens_BT = jax.random.randint(keys[0], (rows, t), 4, config.model.vocab_size, jnp.int32)
    mask_BT = jnp.broadcast_to(jnp.arange(1, t) >= prompt_len, (rows, t - 1))
    norms = global_normalisers(mask_BT, new_tokens)
    logp_BT = jnp.where(mask_BT, -2.0 + 0.1 * jax.random.normal(keys[1], mask_BT.shape), 0.0)
    batch = {"tokens": tokens_BT, "positions": jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (rows, t)),
             "valid": jnp.ones((rows, t), bool), "mask": mask_BT,
             "weight": token_weights_BT(mask_BT, config.grpo.loss_aggregation, norms), "sampler_logp": logp_BT,
             "adv": jax.random.normal(keys[2], (rows,))}
    if config.grpo.kl_coef > 0:
        batch["ref_logp"] = logp_BT
    return batch


def place_rows(batch: dict, mesh, rules) -> dict:
    """Rows split over the mesh's batch axes, as the trainer places a batch (UserError if they do not split)."""
    axes = check_batch_rows(batch["tokens"].shape[0], mesh, rules, "bench: the train batch")
    return jax.device_put(batch, NamedSharding(mesh, P(axes or None)))


def train_figures(config, policy, mesh, rules, rows: int, prompt_len: int, new_tokens: int, matmul_n: int,
                  repeats: int = 3) -> dict:
    """`train_tokens_per_s`, `train_step_flops` and `mfu` of the GRPO update on `policy` (left untouched), and
    the matmul peak's figures (`rl.bench.matmul`, [matmul_n, matmul_n] per device) that `mfu` divides by: the
    update step and the peak's matmul timed in turns (`best_seconds_in_turns`), so both see the same load."""
    optimizer = make_optimizer(config.optimizer)
    graphdef, state = init_train_state(policy, optimizer, with_ref=False)
    shardings = tree_shardings(state, mesh, rules)
    state = jax.jit(lambda s: jax.tree.map(jnp.copy, s), out_shardings=shardings)(state)  # own buffers
    update = dataclasses.replace(config.update, routing_replay=False)
    step = make_grpo_step(graphdef, optimizer, config.grpo, update, config.model, config.optimizer.grad_clip_norm)
    step = jax.jit(step, out_shardings=(shardings, None), donate_argnums=0)
    batch = place_rows(synthetic_batch(config, rows, prompt_len, new_tokens), mesh, rules)
    matmul, shape = peak_call(matmul_n)
    seconds, matmul_s = best_seconds_in_turns(threaded_call(step, state, batch), matmul, repeats=repeats)
    peak = peak_figures(*shape, matmul_s)
    t = prompt_len + new_tokens
    flops = train_step_flops(config.model, rows, t)
    return {**peak, "train_rows": rows, "train_seq_len": t, "train_step_seconds": seconds,
            "train_tokens_per_s": rows * t / seconds, "train_step_flops": flops,
            "train_flops_per_s": flops / seconds, "mfu": flops / seconds / peak["matmul_peak_flops"]}
