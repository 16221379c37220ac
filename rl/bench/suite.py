"""One bench run: the sizes, the shared policy, and the figures in order.

Order: the sampler, HF generate on the same weights, the matmul peak right before the train step (MFU
divides one by the other, so both see the same load on a shared machine), whole GRPO steps (and with
`grpo.max_staleness` 1 vs 0 under a 20 ms reward, rl.bench.staleness), the MoE layers, then the reward
pool (its worker processes last, so they never share the CPU with the JAX work). The policy is randomly
initialised from the config on its mesh; throughput does not depend on the weights' values.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from typing import Sequence

import numpy as np

from r1jax.model.factory import count_params, init_policy
from r1jax.rl.bench import hf
from r1jax.rl.bench.grpo_step import grpo_step_figures, side_by_side
from r1jax.rl.bench.longtail import longtail_figures
from r1jax.rl.bench.moe import moe_figures
from r1jax.rl.bench.report import with_goals
from r1jax.rl.bench.reward_pool import code_figures, pool_figures
from r1jax.rl.bench.sampler import bench_prompts, greedy_generate, sampler_figures, sampler_policy
from r1jax.rl.bench.staleness import KEYS as STALENESS_KEYS, staleness_figures
from r1jax.rl.bench.timing import device_info
from r1jax.rl.bench.train_step import train_figures
from r1jax.rl.config import load_config
from r1jax.sharding.context import use_mesh
from r1jax.sharding.mesh import build_mesh


@dataclasses.dataclass(frozen=True)
class BenchSize:
    batch: int = 64  # sampler rows (one sample per prompt), also the HF batch
    prompt_len: int = 32
    new_tokens: int = 128
    train_rows: int = 64  # update-step rows of prompt_len + new_tokens tokens
    moe_tokens: int = 8192  # tokens through the MoE layer
    grpo_steps: int = 8  # whole GRPO steps on the side-by-side workload (rl.bench.grpo_step), warm-up included
    grpo_warmup: int = 2
    grpo_new_tokens: int | None = None  # None: the workload's 64
    staleness_steps: int = 6  # GRPO steps at max_staleness 0 and at 1 with a 20 ms reward (0: not measured)
    staleness_warmup: int = 2
    matmul_n: int = 4096  # the peak's [n, n] @ [n, n] per device
    pool_items: int = 600
    code_items: int = 200  # code verifications: each a sandboxed run of a program against its tests
    longtail_prompts: int = 32  # the long-tail rollout: P x G rows decoded by `longtail_slots` slots
    longtail_samples: int = 8
    longtail_slots: int = 64  # the sampler figure's batch (32 before the tail's slots: benchmarks/HISTORY.md)
    longtail_tail_slots: tuple[int, ...] = (32, 16, 8, 4, 2, 1)  # sampling.tail_slots: halving in the tail
    repeats: int = 3  # timed repeats after a warm-up; the best counts


FULL = BenchSize()
QUICK = BenchSize(batch=4, prompt_len=8, new_tokens=16, train_rows=4, moe_tokens=256, matmul_n=256,
                  pool_items=16, code_items=8, repeats=1, grpo_steps=2, grpo_warmup=1, grpo_new_tokens=8,
                  longtail_prompts=2, longtail_samples=4, longtail_slots=2, longtail_tail_slots=(1,),
                  staleness_steps=0)


def default_workers() -> tuple[int, ...]:
    cpus = os.cpu_count() or 1
    return (1, cpus) if cpus > 1 else (1,)


_START = time.perf_counter()


def progress(message: str) -> None:
    print(f"bench [{time.perf_counter() - _START:6.1f} s]: {message}", file=sys.stderr, flush=True)


def _in_mesh(fn, mesh, rules):
    with use_mesh(mesh, rules):
        return fn()


def run_bench(preset: str = "bench", overrides: Sequence[str] = (), quick: bool = False,
              against_hf: bool = False, workers: Sequence[int] | None = None, say=progress,
              result: dict | None = None) -> dict:
    """Every figure (see rl.bench.report), its goal, and what it was measured on, as one dict. `result`, when
    given, is filled as each part finishes: what was measured before an interruption stays there."""
    size = QUICK if quick else FULL
    config = load_config(preset, overrides)
    mesh = build_mesh(config.sharding)
    rules = config.sharding.logical_rules()
    result = {} if result is None else result
    result.update({"preset": preset, "overrides": list(overrides), "quick": quick, "device": device_info(),
                   "size": dataclasses.asdict(size), "family": config.model.family, **count_params(config.model)})
    device = result["device"]
    if device["backend"] == "cpu" and device["local_devices"] == 1 and (device["cpu_count"] or 1) > 1:
        say(f"one CPU device on {device['cpu_count']} cores: `r1jax --cpu-devices {device['cpu_count']} bench ...` "
            "runs a device per core (README, Testing sharding on a CPU mesh)")
    prompts_BP = bench_prompts(config.model.vocab_size, size.batch, size.prompt_len)
    with use_mesh(mesh, rules):
        policy = init_policy(config.model, config.seed, mesh, rules)
    sample_graphdef, sample_state, sample_mesh, sample_rules, result["sampler_layout"] = sampler_policy(
        config, policy, mesh, rules)
    with use_mesh(sample_mesh, sample_rules):
        say(f"sampler ({size.batch} x {size.prompt_len} prompt + {size.new_tokens} new tokens, "
            f"{result['sampler_layout']} layout)")
        result.update(sampler_figures(sample_graphdef, sample_state, prompts_BP, size.new_tokens, size.repeats,
                                      kv_block=config.sampling.kv_block,
                                      cache_phases=config.sampling.cache_phases))
        say(f"long-tail rollout ({size.longtail_prompts} x {size.longtail_samples} rows, "
            f"{size.longtail_slots} slots, then {list(size.longtail_tail_slots)} in the tail, vs a fixed batch)")
        result.update(longtail_figures(sample_graphdef, sample_state, prompts_BP[:size.longtail_prompts],
                                       size.longtail_samples, size.new_tokens, size.longtail_slots,
                                       size.longtail_tail_slots, config.sampling.kv_block, size.repeats,
                                       config.sampling.cache_phases))
        result.update(dict.fromkeys(hf.KEYS))
        if against_hf:
            ours = (greedy_generate(sample_graphdef, sample_state, prompts_BP, 1, config.sampling.kv_block),
                    greedy_generate(sample_graphdef, sample_state, prompts_BP, size.new_tokens,
                                    config.sampling.kv_block, config.sampling.cache_phases))
            ours_BN = np.asarray(ours[1]().completion_BN)
    if against_hf:
        say("HF transformers generate on the exported weights, and in turns with the sampler's")
        in_mesh = tuple(functools.partial(_in_mesh, fn, sample_mesh, sample_rules) for fn in ours)
        result.update(hf.hf_figures(policy, prompts_BP, size.new_tokens, in_mesh, ours_BN, size.repeats))
        del ours, in_mesh
    del sample_state
    with use_mesh(mesh, rules):
        say(f"GRPO train step ({size.train_rows} x {size.prompt_len + size.new_tokens} tokens) and, in turns with it, "
            f"the matmul peak ({size.matmul_n}^2 float32 per device)")
        result.update(train_figures(config, policy, mesh, rules, size.train_rows, size.prompt_len,
                                    size.new_tokens, size.matmul_n, size.repeats))
    say(f"GRPO steps on the side-by-side workload ({size.grpo_steps} steps, {size.grpo_warmup} warm-up)")
    result.update(grpo_step_figures(side_by_side(config, size.grpo_steps, size.grpo_new_tokens), size.grpo_warmup))
    result.update(dict.fromkeys(STALENESS_KEYS))
    if size.staleness_steps:
        say(f"GRPO steps, max_staleness 1 vs 0, scoring 20 ms per completion ({size.staleness_steps} steps each, "
            f"{size.staleness_warmup} warm-up)")
        result.update(staleness_figures(side_by_side(config, size.staleness_steps, size.grpo_new_tokens),
                                        size.staleness_warmup))
    say(f"MoE layer, 8 vs 64 experts ({size.moe_tokens} tokens)")
    result.update(moe_figures(config.model, size.moe_tokens, size.repeats))
    workers = tuple(workers or default_workers())
    say(f"reward pool ({size.pool_items} items, workers {', '.join(map(str, workers))})")
    result.update(pool_figures(size.pool_items, workers))
    say(f"code verifications ({size.code_items} programs in the sandbox, workers {', '.join(map(str, workers))})")
    result.update(code_figures(size.code_items, workers))
    say("done")
    result["device"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return with_goals(result)
