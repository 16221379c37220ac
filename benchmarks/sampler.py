"""Sampler throughput: prefill and decode tokens/s, and decode-step time at cache position 128 vs 1024.

    python benchmarks/sampler.py [--preset tiny|bench] [--batch 64] [--new 128] [--json]

Numbers are for the machine it runs on; `r1jax bench` will fold this in.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from model.factory import init_policy
from rl.config import load_config
from rl.sampler import generate_padded


def timed(fn, *args, repeats=3):
    jax.block_until_ready(fn(*args))  # compile and warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def decode_step_seconds(graphdef, state, batch, position, vocab):
    policy = nnx.merge(graphdef, state)
    cache_len = position + 8

    @jax.jit
    def step(state, caches, token):
        p = nnx.merge(graphdef, state)
        kv_valid = jnp.arange(cache_len)[None, :] <= position
        out, _ = p.forward_cached(token, jnp.full_like(token, position), jnp.ones_like(token, bool), caches,
                                  jnp.int32(position), jnp.broadcast_to(kv_valid, (batch, cache_len)))
        return out.logits_BTV

    caches = policy.init_cache(batch, cache_len)
    token = jnp.ones((batch, 1), jnp.int32) % vocab
    return timed(step, state, caches, token)


def run(preset: str, batch: int, new_tokens: int, prompt_len: int = 32) -> dict:
    cfg = load_config(preset).model
    graphdef, state = nnx.split(init_policy(cfg, 0))
    prompts = jnp.asarray(np.random.RandomState(0).randint(4, cfg.vocab_size, (batch, prompt_len)), jnp.int32)
    valid = jnp.ones_like(prompts, bool)
    args = (jax.random.key(0), jnp.float32(1.0), jnp.int32(0), jnp.float32(1.0))

    def gen(max_new):
        return lambda: generate_padded(graphdef, state, prompts, valid, *args, max_new=max_new, samples=1,
                                       eos_id=-1, pad_id=0, ignore_eos=True)

    prefill_s = timed(gen(1))  # prefill plus one decode step
    full_s = timed(gen(new_tokens))
    decode_s = max(full_s - prefill_s, 1e-9)
    step_128 = decode_step_seconds(graphdef, state, batch, 128, cfg.vocab_size)
    step_1024 = decode_step_seconds(graphdef, state, batch, 1024, cfg.vocab_size)
    return {
        "preset": preset, "backend": jax.default_backend(), "batch": batch, "new_tokens": new_tokens,
        "prefill_tokens_per_s": batch * prompt_len / prefill_s,
        "decode_tokens_per_s": batch * (new_tokens - 1) / decode_s,
        "generate_tokens_per_s": batch * new_tokens / full_s,
        "decode_step_ms_at_128": 1e3 * step_128, "decode_step_ms_at_1024": 1e3 * step_1024,
        "decode_step_ratio_1024_vs_128": step_1024 / step_128,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.preset, args.batch, args.new)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:32s} {value:.1f}" if isinstance(value, float) else f"{key:32s} {value}")


if __name__ == "__main__":
    main()
