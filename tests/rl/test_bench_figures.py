"""`r1jax bench`'s figures from hand counts, independent of the timings a run measures (fake clocks, fixed
seconds): attention FLOPs, best-of timings, decode tokens/s, every ratio with a goal, MFU, and the goals' verdicts."""

import types

import numpy as np
import pytest

from r1jax.model.config import ModelConfig
from r1jax.rl.bench import timing
from r1jax.rl.bench.flops import attention_flops


def test_mla_attention_flops_use_the_query_key_and_value_head_dims():
    # DeepSeek MLA: d_qk = qk_nope + qk_rope = 16 + 8, d_v = 16 (differ, so swapping or reusing one shows)
    cfg = ModelConfig(family="deepseek_v3", num_hidden_layers=2, num_attention_heads=4, qk_nope_head_dim=16,
                      qk_rope_head_dim=8, v_head_dim=16)
    rows, seq = 3, 10
    forward = 2 * rows * seq * seq * 4 * (16 + 8) + 2 * rows * seq * seq * 4 * 16  # QK^T, then PV, per layer
    assert attention_flops(cfg, rows, seq) == 3 * forward * 2  # forward + backward (2x), 2 layers


def test_best_seconds_is_the_fastest_timed_call(monkeypatch):
    clock, durations = [0.0], iter([9.0, 3.0, 1.0, 2.0])  # warm-up, then 3 timed calls

    def fn():
        clock[0] += next(durations)
        return np.zeros(())

    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    assert timing.best_seconds(fn, repeats=3) == 1.0


def test_decode_tokens_per_s_counts_the_tokens_after_the_first_over_the_decode_seconds():
    # 4 rows x 11 new tokens: the first comes from the prefill (timed by the one-token generate), so
    # 4 x 10 decode tokens over 3.0 - 1.0 s
    assert timing.decode_tokens_per_s(4, 11, prefill_s=1.0, full_s=3.0) == pytest.approx(20.0)
    # noise made the full generate no slower than the one-token one: the full seconds, a lower bound
    assert timing.decode_tokens_per_s(4, 11, prefill_s=3.0, full_s=2.0) == pytest.approx(20.0)


# The ratio figures with goals, from fixed seconds (each part's timing stubbed: the formula, not the machine,
# is under test). A ratio inverted reads as a met goal that is missed, or the reverse.

def _fixed_seconds(*seconds):
    calls = iter(seconds)
    return lambda *fns, **kwargs: list(next(calls))


def test_longtail_figures_from_fixed_seconds(monkeypatch):
    from r1jax.rl.bench import longtail
    monkeypatch.setattr(longtail, "best_seconds_in_turns", _fixed_seconds((4.0, 1.0)))  # fixed, continuous
    prompts = np.full((2, 3), 5, np.int32)
    figures = longtail.longtail_figures(None, None, prompts, samples=4, budget=16, slots=2)
    tokens = int(longtail.longtail_lengths(8, 16).sum())
    assert figures["longtail_tokens"] == tokens
    assert figures["longtail_fixed_tokens_per_s"] == pytest.approx(tokens / 4.0)
    assert figures["longtail_continuous_tokens_per_s"] == pytest.approx(tokens / 1.0)
    assert figures["longtail_speedup"] == pytest.approx(4.0)  # continuous 4x faster: the goal (>= 3) is met


def test_sampler_figures_from_fixed_seconds(monkeypatch):
    from r1jax.rl.bench import sampler
    # (one-token generate, full generate), then (decode step at 128, at 1024)
    monkeypatch.setattr(sampler, "best_seconds_in_turns", _fixed_seconds((0.5, 2.5), (0.010, 0.030)))
    monkeypatch.setattr(sampler, "greedy_generate", lambda *args, **kwargs: None)
    monkeypatch.setattr(sampler, "decode_step_call", lambda *args, **kwargs: None)
    figures = sampler.sampler_figures(None, None, np.zeros((4, 8), np.int32), new_tokens=11)
    assert figures["prefill_tokens_per_s"] == pytest.approx(4 * 8 / 0.5)
    assert figures["decode_tokens_per_s"] == pytest.approx(4 * 10 / 2.0)
    assert figures["generate_tokens_per_s"] == pytest.approx(4 * 11 / 2.5)
    assert figures["decode_step_ms_at_128"] == pytest.approx(10.0)
    assert figures["decode_step_ms_at_1024"] == pytest.approx(30.0)
    assert figures["decode_step_ratio_1024_vs_128"] == pytest.approx(3.0)  # far over near: the goal (<= 2) missed


def test_moe_ratio_from_fixed_seconds(monkeypatch):
    from r1jax.rl.bench import moe
    from r1jax.rl.config import load_config
    monkeypatch.setattr(moe, "best_seconds_in_turns", _fixed_seconds((0.002, 0.003)))  # 8, 64 experts
    monkeypatch.setattr(moe, "moe_step_call", lambda *args, **kwargs: None)
    model = load_config("tiny", ["model.num_hidden_layers=1", "model.first_k_dense_replace=0"]).model
    figures = moe.moe_figures(model, tokens=16)
    assert figures["moe_step_ms"] == {"8": pytest.approx(2.0), "64": pytest.approx(3.0)}
    assert figures["moe_step_ratio_64_vs_8"] == pytest.approx(1.5)  # 64 over 8: the goal (<= 1.3) missed


def test_train_figures_mfu_and_tokens_per_s_from_fixed_seconds(monkeypatch):
    """MFU = (6 x active params x tokens + attention FLOPs) / step seconds / measured peak, and tokens/s over
    every position of the rows (prompt + completion), from fixed seconds (nothing compiles or runs)."""
    from r1jax.model.factory import init_policy
    from r1jax.rl.bench import train_step
    from r1jax.rl.bench.flops import train_step_flops
    from r1jax.rl.config import load_config
    from r1jax.sharding.context import use_mesh
    from r1jax.sharding.mesh import build_mesh

    config = load_config("tiny", ["model.num_hidden_layers=1", "model.first_k_dense_replace=0",
                                  "model.hidden_size=64", "model.intermediate_size=128",
                                  "model.moe_intermediate_size=64"])
    mesh = build_mesh(config.sharding)
    rules = config.sharding.logical_rules()
    with use_mesh(mesh, rules):
        policy = init_policy(config.model, config.seed, mesh, rules)
    monkeypatch.setattr(train_step, "threaded_call", lambda *args: None)
    monkeypatch.setattr(train_step, "best_seconds_in_turns", _fixed_seconds((2.0, 0.5)))  # step, one matmul
    rows, prompt_len, new_tokens, n = 8, 4, 12, 64
    with use_mesh(mesh, rules):
        figures = train_step.train_figures(config, policy, mesh, rules, rows, prompt_len, new_tokens, n)
    devices = figures["matmul_devices"]
    peak = devices * 2 * n**3 / 0.5
    flops = train_step_flops(config.model, rows, prompt_len + new_tokens)
    assert figures["matmul_peak_flops"] == pytest.approx(peak)
    assert figures["train_tokens_per_s"] == pytest.approx(rows * (prompt_len + new_tokens) / 2.0)
    assert figures["mfu"] == pytest.approx(flops / 2.0 / peak)


def test_goals_compare_each_way_and_at_the_threshold():
    from r1jax.rl.bench.report import FIGURES, with_goals
    targets = {f.key: f.target for f in FIGURES if f.goal}
    assert targets == {"decode_step_ratio_1024_vs_128": "<= 2", "longtail_speedup": ">= 3", "mfu": ">= 0.5",
                       "moe_step_ratio_64_vs_8": "<= 1.3", "decode_speedup_vs_hf": ">= 5"}
    met = lambda **values: {k: v["met"] for k, v in with_goals(values)["goals"].items() if k in values}
    assert met(mfu=0.5, longtail_speedup=3.0, decode_speedup_vs_hf=5.0, moe_step_ratio_64_vs_8=1.3,
               decode_step_ratio_1024_vs_128=2.0) == dict.fromkeys(targets, True)  # at the threshold: met
    assert met(mfu=0.49, longtail_speedup=2.9, decode_speedup_vs_hf=4.9, moe_step_ratio_64_vs_8=1.31,
               decode_step_ratio_1024_vs_128=2.01) == dict.fromkeys(targets, False)
    assert met(mfu=None, longtail_speedup=float("nan"), moe_step_ratio_64_vs_8=float("inf")) == \
        {"mfu": None, "longtail_speedup": None, "moe_step_ratio_64_vs_8": None}  # a stopped part: no verdict
