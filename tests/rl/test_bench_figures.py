"""`r1jax bench`'s figures from hand counts, independent of the timings a run measures (fake clocks, fixed
seconds): attention FLOPs, best-of timings, decode tokens/s, every ratio with a goal, MFU, and the goals' verdicts."""

import json
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
    # equal to the clock's resolution: no decode seconds left to divide by, the full seconds again (not 1 / 0)
    assert timing.decode_tokens_per_s(4, 11, prefill_s=2.0, full_s=2.0) == pytest.approx(20.0)


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
    assert met(longtail_speedup=3, moe_step_ratio_64_vs_8=2) == {"longtail_speedup": True,
                                                                "moe_step_ratio_64_vs_8": False}  # ints too


def test_best_seconds_leaves_out_the_warm_up_call_and_times_one_call_at_least(monkeypatch):
    clock, calls = [0.0], []
    durations = iter([0.5, 4.0, 3.0, 0.25, 6.0, 0.75])  # a fast first call: timed only without the warm-up

    def fn():
        calls.append(1)
        clock[0] += next(durations)
        return np.zeros(())

    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    assert timing.best_seconds(fn, repeats=2) == 3.0 and len(calls) == 3  # 0.5 was the untimed warm-up
    assert timing.best_seconds(fn, repeats=2, warm_up=False) == 0.25 and len(calls) == 5  # the caller warmed up
    assert timing.best_seconds(fn, repeats=0, warm_up=False) == 0.75  # one timed call, never inf


def test_the_tables_values_read_in_their_units():
    from r1jax.rl.bench.report import format_value
    assert format_value(0.524, "fraction") == "52.4%"  # MFU
    assert format_value(2.534, "x") == "2.53x"
    assert format_value(2.7e11, "FLOP/s") == "270.0 GFLOP/s"
    assert format_value(8229.4, "tokens/s") == "8,229"
    assert format_value({"1": 410.0, "2": 734.4}, "verifications/s") == "1: 410, 2: 734"
    assert format_value(None, "x") == "—"


def test_every_figure_the_readme_describes_has_a_row_in_the_table_and_a_goal_entry(monkeypatch, capsys):
    """The figures of README's Benchmarks section, listed by hand: one dropped from FIGURES would vanish from the
    table, from `goals` and (in a stopped run) from the JSON."""
    from r1jax.rl.bench.report import FIGURES, render_table, with_goals
    described = {"prefill_tokens_per_s", "decode_tokens_per_s", "decode_step_ratio_1024_vs_128", "longtail_speedup",
                 "matmul_peak_flops", "train_tokens_per_s", "mfu", "grpo_generated_tokens_per_s", "staleness_speedup",
                 "pool_verifications_per_s", "pool_scaling", "code_verifications_per_s", "code_scaling",
                 "moe_step_ratio_64_vs_8", "hf_decode_tokens_per_s", "hf_torch_threads",
                 "decode_tokens_per_s_beside_hf", "decode_speedup_vs_hf"}
    assert {f.key for f in FIGURES} == described
    result = with_goals({"mfu": 0.524, "staleness_speedup": 1.38, "moe_step_ratio_64_vs_8": 1.54, "preset": "bench",
                         "quick": False, "device": {"local_devices": 2, "device_kind": "cpu", "backend": "cpu",
                                                    "cpu_count": 2, "load_average": [1.0], "load_average_end": [1.5]}})
    assert set(result["goals"]) == described
    monkeypatch.setenv("COLUMNS", "200")
    render_table(result)
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in capsys.readouterr().out.splitlines() if line.count("│") > 4}
    assert rows["train-step MFU"] == ["52.4%", "", ">= 50.0%", "yes"]
    assert rows["MoE layer step, 64 vs 8 experts"] == ["1.54x", "", "<= 1.30x", "no"]
    assert rows["GRPO step, max_staleness 1 vs 0 (20 ms reward)"] == ["1.38x", "", "—", ""]
    assert len(rows) == len(described)  # one row per figure


def test_about_one_longtail_row_in_16_runs_to_the_budget():
    from r1jax.rl.bench.longtail import longtail_lengths
    lengths = longtail_lengths(4096, 128)  # README: "about one in 16 the whole budget" (binomial sd 0.004)
    assert 0.05 <= (lengths == 128).mean() <= 0.075 and (lengths == 16).mean() == 1 - (lengths == 128).mean()
    assert set(longtail_lengths(16, 4).tolist()) <= {1, 4}  # a budget under 8: short rows of 1 token, never 0


def test_the_moe_comparison_keeps_two_experts_a_routing_group():
    from r1jax.rl.bench.moe import with_experts
    cfg = ModelConfig(family="deepseek_v3", n_routed_experts=16, n_group=8, topk_group=6, num_experts_per_tok=2)
    few, many = with_experts(cfg, 8), with_experts(cfg, 64)
    assert (few.n_group, few.topk_group) == (4, 4)  # 8 groups of 1 expert cannot score by top-2; 6 of 4 groups
    assert (many.n_group, many.topk_group) == (8, 6)


def test_the_synthetic_train_batch_trains_every_completion_token_and_splits_over_the_batch_axes():
    from r1jax.errors import UserError
    from r1jax.rl.bench.train_step import place_rows, synthetic_batch
    from r1jax.rl.config import load_config
    from r1jax.sharding.mesh import build_mesh
    config = load_config("tiny")
    batch = synthetic_batch(config, rows=2, prompt_len=4, new_tokens=12)
    # targets are tokens 1..15; the completion's 12 (positions 4..15) are trained, the prompt's 3 are not
    assert batch["mask"].shape == (2, 15) and np.asarray(batch["mask"]).sum(1).tolist() == [12, 12]
    assert not np.asarray(batch["mask"])[:, :3].any()
    mesh = build_mesh(config.sharding)  # fsdp over the 8 CPU devices
    with pytest.raises(UserError, match="12 rows does not split over the 8 data-parallel devices"):
        place_rows(synthetic_batch(config, rows=12, prompt_len=4, new_tokens=4), mesh, config.sharding.logical_rules())


def test_reward_pool_rates_are_items_over_seconds_and_scaling_is_n_workers_over_1(monkeypatch):
    from r1jax.rl.bench import reward_pool
    clock = [0.0]

    class Pool:  # scores a batch in 0.5 s per item over the workers, every item "ok" with reward 1
        def __init__(self, config, pool_config, tasks):
            self.workers = pool_config.workers

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def score_batch(self, items):
            clock[0] += 0.5 * len(items) / self.workers
            return [types.SimpleNamespace(status="ok", rewards={"accuracy": 1.0, "code": 1.0}) for _ in items]

    monkeypatch.setattr(reward_pool, "RewardPool", Pool)
    monkeypatch.setattr(reward_pool, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    items = reward_pool.make_items(8)
    measured = reward_pool.measure(2, items)
    assert (measured["seconds"], measured["verifications_per_s"], measured["ok"]) == (2.0, 4.0, 8)  # 8 items / 2 s
    figures = reward_pool.pool_figures(8, (1, 4))
    assert figures["pool_verifications_per_s"] == {"1": 2.0, "4": 8.0} and figures["pool_scaling"] == 4.0
    monkeypatch.setattr(reward_pool, "make_code_items", lambda count: items[:count])
    code = reward_pool.code_figures(4, (1, 2))
    assert code["code_verifications_per_s"] == {"1": 2.0, "2": 4.0} and code["code_scaling"] == 2.0
    # --workers listed most first: still the most workers' rate over the fewest's
    assert reward_pool.pool_figures(8, (4, 1))["pool_scaling"] == 4.0
    assert reward_pool.code_figures(4, (2, 1))["code_scaling"] == 2.0
    # one worker 200 s an item (a rate that rounds to 0): the scaling was NaN, invalid JSON and `nanx` on the table
    slow = Pool.score_batch
    monkeypatch.setattr(Pool, "score_batch", lambda self, items: slow(self, items * (400 if self.workers == 1 else 1)))
    figures = reward_pool.pool_figures(8, (4, 1))
    assert figures["pool_verifications_per_s"] == {"4": 8.0, "1": 0.0} and figures["pool_scaling"] is None
    assert figures["pool_scaling_unmeasured"] == "the 1-worker rate is 0.0 verifications/s (rounded to 0.1): no " \
                                                "ratio over it"
    assert json.loads(json.dumps(figures, allow_nan=False)) == figures
    from r1jax.rl.bench.report import FIGURES, format_value
    unit = next(f.unit for f in FIGURES if f.key == "pool_scaling")
    assert format_value(figures["pool_scaling"], unit) == "—"


def test_a_slow_but_measured_fewest_rate_still_gives_a_scaling():
    from r1jax.rl.bench import reward_pool

    # 0.5 verifications/s with one worker is measured (only a rate rounded to 0 is not): 2.0 / 0.5 = 4x
    assert reward_pool.scaling("code", {"1": 0.5, "4": 2.0}, (4, 1)) == {"code_scaling": 4.0}
