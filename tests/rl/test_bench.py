"""r1jax bench: one quick run through the CLI has every figure and goal; the matmul peak counts 2n^3 FLOPs
per product (checked against XLA's own count and NumPy); the train-step FLOP formula matches a hand count;
the 64-expert MoE layer matches the 8-expert one's active parameters."""

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx

from r1jax.model.config import ModelConfig
from r1jax.model.factory import init_policy
from r1jax.model.moe import MoE
from r1jax.errors import Interrupted, UserError
from r1jax.rl.bench.flops import train_step_flops
from r1jax.rl.bench.grpo_step import side_by_side, summarize_steps, trl_step_figures
from r1jax.rl.bench.longtail import longtail_lengths
from r1jax.rl.bench.matmul import matmul_flops, matmul_peak, sharded_operands
from r1jax.rl.bench.moe import moe_active_params, with_experts
from r1jax.rl.bench.sampler import bench_prompts, greedy_generate, sampler_policy
from r1jax.rl.bench.report import FIGURES, describe
from r1jax.rl.bench import timing
from r1jax.rl.config import load_config
from r1jax.rl.host_info import cpu_model_and_flags, vector_isa
from r1jax.sharding.context import use_mesh
from r1jax.sharding.mesh import build_mesh
from r1jax.sharding.params import tree_shardings
from tests.rl.conftest import subprocess_env

HEADLINE = ["prefill_tokens_per_s", "decode_tokens_per_s", "generate_tokens_per_s", "train_tokens_per_s",
            "train_step_flops", "mfu", "matmul_peak_flops", "moe_step_ratio_64_vs_8",
            "decode_step_ratio_1024_vs_128", "decode_step_ms_at_128", "decode_step_ms_at_1024",
            "hf_decode_tokens_per_s", "hf_prefill_tokens_per_s", "decode_speedup_vs_hf", "pool_scaling",
            "decode_tokens_per_s_beside_hf",
            "grpo_step_seconds", "grpo_sample_seconds", "grpo_update_seconds", "grpo_generated_tokens",
            "grpo_generated_tokens_per_s",
            "longtail_speedup", "longtail_fixed_tokens_per_s", "longtail_continuous_tokens_per_s"]


# the tiny preset cut to one narrow MoE layer: the figures' plumbing, not their size, is under test
SMALL = ["model.num_hidden_layers=1", "model.first_k_dense_replace=0", "model.hidden_size=64",
         "model.intermediate_size=128", "model.moe_intermediate_size=64"]


def positive_finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_quick_bench_against_hf_reports_every_figure_with_its_goal():
    # the smallest model: one MoE layer of the tiny preset; a subprocess sees one CPU device, as users do
    command = [sys.executable, "-m", "r1jax", "bench", "--preset", "tiny", "--quick", "--against", "hf",
               "--json", "--workers", "1,2", *SMALL]
    result = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)  # stdout is the JSON object alone; progress goes to stderr
    assert "reward pool" in result.stderr
    # one device on a host of several cores: the run says how to use them all
    assert (f"`r1jax --cpu-devices {os.cpu_count()} bench" in result.stderr) == (os.cpu_count() > 1)
    assert report["sampler_layout"] == "training"  # one device: every layout is the same
    for key in HEADLINE:
        assert positive_finite(report[key]), (key, report[key])
    # MFU divides two timings taken at different moments; on a shared CPU it can exceed 1, so check its parts
    assert report["mfu"] == pytest.approx(report["train_flops_per_s"] / report["matmul_peak_flops"], rel=1e-9)
    assert report["train_flops_per_s"] == pytest.approx(report["train_step_flops"] / report["train_step_seconds"],
                                                        rel=1e-9)
    assert set(report["pool_verifications_per_s"]) == {"1", "2"}
    assert all(positive_finite(v) for v in report["pool_verifications_per_s"].values())
    assert set(report["code_verifications_per_s"]) == {"1", "2"}, report["code_sandbox"]
    assert all(positive_finite(v) for v in report["code_verifications_per_s"].values())
    assert all(positive_finite(v) for v in report["moe_step_ms"].values())
    # the same weights decode the same greedy tokens in transformers (README: all tokens agree); measured 1.0
    # on this model (random weights could make a near-tie flip late, which this would report)
    assert report["hf_greedy_token_match"] == 1.0
    by_threads = report["hf_decode_tokens_per_s_by_threads"]  # HF's baseline is its faster thread count,
    assert "1" in by_threads and by_threads[str(report["hf_torch_threads"])] == max(by_threads.values())
    # then timed in turns with the sampler's generates: the ratio is of those two
    assert report["decode_speedup_vs_hf"] == pytest.approx(
        report["decode_tokens_per_s_beside_hf"] / report["hf_decode_tokens_per_s"], rel=1e-9)
    assert report["hf_device"] == "cpu"  # HF runs where JAX does: on the GPU only when JAX runs on one
    # the whole GRPO step holds its parts (the rest is metrics and bookkeeping); quick: 2 steps, 1 timed
    parts = report["grpo_sample_seconds"] + report["grpo_score_seconds"] + report["grpo_update_seconds"]
    assert report["grpo_score_seconds"] >= 0 and parts <= report["grpo_step_seconds"]
    assert report["grpo_steps_timed"] == 1
    assert report["grpo_generated_tokens_per_s"] == pytest.approx(
        report["grpo_generated_tokens"] / report["grpo_step_seconds"], rel=1e-9)
    assert report["preset"] == "tiny" and report["quick"] is True
    assert report["longtail_slots"] == 2 and report["longtail_tail_slots"] == [1]  # the quick size's tail
    assert report["longtail_tokens"] == int(longtail_lengths(report["longtail_rows"], 16).sum())
    assert report["device"]["backend"] == "cpu" and report["device"]["local_devices"] >= 1
    assert report["device"]["cpu_vector_isa"] == vector_isa(cpu_model_and_flags()[1])  # rl.host_info
    assert report["train_step_flops"] == train_step_flops(tiny_one_layer(), report["train_rows"],
                                                          report["train_seq_len"])
    goals = report["goals"]
    assert set(goals) == {f.key for f in FIGURES}
    assert goals["mfu"]["target"] == ">= 0.5" and goals["decode_speedup_vs_hf"]["target"] == ">= 5"
    assert goals["moe_step_ratio_64_vs_8"]["target"] == "<= 1.3"
    assert goals["decode_step_ratio_1024_vs_128"]["target"] == "<= 2"
    assert goals["decode_speedup_vs_hf"]["met"] == (report["decode_speedup_vs_hf"] >= 5)
    assert goals["prefill_tokens_per_s"] == {"target": None, "met": None}


def test_the_reports_title_names_the_cpus_vector_instructions():
    device = {"local_devices": 1, "device_kind": "cpu", "backend": "cpu", "cpu_count": 2, "cpu_vector_isa": "avx2",
              "load_average": [1.0, 1.0, 1.0], "load_average_end": [2.0, 1.0, 1.0]}
    result = {"preset": "bench", "quick": False, "device": device}
    assert ", 2 CPUs (avx2), load average [1.0, 1.0, 1.0] -> [2.0, 1.0, 1.0]" in describe(result)
    device["cpu_vector_isa"] = None
    assert "2 CPUs (ISA unknown)" in describe(result)


def test_ratio_timings_are_made_in_turns_and_each_keeps_its_best(monkeypatch):
    """A fake clock that each call advances: the calls alternate (warm-up of each first), and each function's
    best is its own fastest timed call, whatever the other's calls took."""
    clock, calls = [0.0], []
    durations = {"a": iter([9.0, 3.0, 1.0, 2.0]), "b": iter([9.0, 5.0, 6.0, 4.0])}  # warm-up, then 3 rounds

    def call(name):
        def fn():
            calls.append(name)
            clock[0] += next(durations[name])
            return np.zeros(())
        return fn
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])
    assert timing.best_seconds_in_turns(call("a"), call("b"), repeats=3) == [1.0, 4.0]
    assert calls == ["a", "b"] * 4


def test_grpo_step_figures_are_medians_after_the_warm_up():
    rows = [{"step_time_s": t, "time/sample_s": t / 2, "time/rollout_s": t / 2 + 0.1, "time/update_s": t / 4,
             "generated_tokens": n} for t, n in ((60.0, 10), (2.0, 100), (4.0, 100), (3.0, 300))]
    figures = summarize_steps(rows, warmup=1)  # the first (compiling) step is dropped
    assert figures == {"grpo_step_seconds": 3.0, "grpo_sample_seconds": 1.5, "grpo_score_seconds": pytest.approx(0.1),
                       "grpo_update_seconds": 0.75, "grpo_generated_tokens": 100.0,
                       "grpo_generated_tokens_per_s": 50.0, "grpo_steps_timed": 3}  # median of 50, 25, 100
    with pytest.raises(UserError, match="none after 4 warm-up"):
        summarize_steps(rows, warmup=4)
    # the score part varies: its median over the steps, not the rollout's median minus the sample's
    varied = [{**row, "time/sample_s": sample, "time/rollout_s": rollout}
              for row, (sample, rollout) in zip(rows[1:], ((0.5, 1.0), (0.6, 2.0), (2.9, 3.0)))]
    assert summarize_steps(varied, warmup=0)["grpo_score_seconds"] == pytest.approx(np.median([0.5, 1.4, 0.1]))


def test_trl_steps_are_summarised_per_generated_token_after_the_warm_up():
    """benchmarks/grpo_vs_trl.py's TRL side (TRL is not installed by the test extra: its arithmetic alone). 8 rows
    a step; steps of (seconds, mean completion length): the first dropped; tokens/s 8 x 40 / 2 = 160, 8 x 30 /
    4 = 60, 8 x 50 / 1 = 400: median 160, where the median length over the median time would read 8 x 40 / 2."""
    figures = trl_step_figures([30.0, 2.0, 4.0, 1.0], [10.0, 40.0, 30.0, 50.0], rows=8, warmup=1)
    assert figures == {"trl_step_seconds": 2.0, "trl_generated_tokens": 320.0, "trl_generated_tokens_per_s": 160.0,
                       "trl_steps_timed": 3}
    skewed = trl_step_figures([2.0, 4.0, 1.0, 8.0], [40.0, 30.0, 50.0, 20.0], rows=8, warmup=0)
    assert skewed["trl_generated_tokens_per_s"] == 110.0  # median of 160, 60, 400, 20 (the pair's mean)
    assert skewed["trl_generated_tokens"] == 280.0 and skewed["trl_step_seconds"] == 3.0
    with pytest.raises(UserError, match="none after 4 warm-up"):
        trl_step_figures([1.0] * 4, [5.0] * 4, rows=8, warmup=4)
    with pytest.raises(UserError, match="3 timed TRL steps but 2 logged"):
        trl_step_figures([1.0] * 3, [5.0] * 2, rows=8, warmup=0)


def test_a_bench_stopped_by_sigterm_prints_what_it_measured_and_exits_143(monkeypatch, capsys):
    # a job's time limit (`timeout`, a scheduler) sends SIGTERM minutes into a run: the figures measured
    # before it are printed, the part it stopped in is named; Python's default lost them all. The sampler part
    # before it hands over its figures without measuring them (compiling its four programs for the 8 test devices
    # was most of this test: 10.3 s -> 2.4 s; the quick bench above measures them for real)
    from r1jax.rl.bench import suite
    from r1jax.rl.cli.main import main

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises here
        raise AssertionError("SIGTERM did not stop the bench")

    measured = {"prefill_tokens_per_s": 123.0, "decode_tokens_per_s": 45.0}
    monkeypatch.setattr(suite, "sampler_figures", lambda *args, **kwargs: dict(measured))
    monkeypatch.setattr(suite, "longtail_figures", terminated)
    before = signal.getsignal(signal.SIGTERM)
    code = main(["bench", "--preset", "tiny", "--quick", "--json", *SMALL], as_program=False)
    out, err = capsys.readouterr()
    report = json.loads(out)  # stdout: the JSON object alone
    assert code == 128 + signal.SIGTERM
    assert {key: report[key] for key in measured} == measured
    assert report["incomplete"]["reason"] == "interrupted"
    assert report["incomplete"]["part"].startswith("long-tail rollout")
    assert report["longtail_speedup"] is None and report["mfu"] is None
    assert report["goals"]["longtail_speedup"] == {"target": ">= 3", "met": None}
    assert "stopped in 'long-tail rollout" in err
    assert signal.getsignal(signal.SIGTERM) is before  # the bench's handler is gone again


def test_a_bench_grpo_run_stopped_by_a_signal_stops_the_bench(monkeypatch, tmp_path):
    # inside a bench, a GRPO run holds SIGTERM as a preemption (checkpoint, stop): the bench must stop too,
    # not report its steps as too few
    from r1jax.rl.bench import grpo_step

    class Stopped:
        def __init__(self, *args):
            self.stop = type("Flag", (), {"signal": signal.SIGTERM})()

        def run(self):
            return {"stopped_at_step": 1}

    monkeypatch.setattr(grpo_step, "Trainer", Stopped)
    with pytest.raises(Interrupted) as stopped:
        grpo_step.grpo_rows(load_config("bench_qwen3"), tmp_path)
    assert stopped.value.signum == signal.SIGTERM


def test_the_side_by_side_workload_keeps_the_presets_model():
    config = side_by_side(load_config("bench"), steps=3, max_new_tokens=8)
    workload = load_config("bench_qwen3")
    assert config.model == load_config("bench").model and config.sharding == load_config("bench").sharding
    assert [(s.kind, s.steps) for s in config.stages] == [("grpo", 3)] and config.sampling.max_new_tokens == 8
    assert (config.grpo, config.data, config.tokenizer) == (workload.grpo, workload.data, workload.tokenizer)
    assert workload.model.family == "qwen3_moe" and workload.grpo.kl_coef == 0 and not workload.grpo.dynamic_sampling
    # the sampler's layout is the preset's (where it runs), the rest of sampling the workload's
    assert config.sampling.mesh == load_config("bench").sampling.mesh == {"fsdp": 1, "expert": -1}
    assert config.sampling.kv_block == workload.sampling.kv_block == 0 and workload.sampling.mesh is None
    mine = load_config("bench", ["seed=7", "sampling.layout=train"])
    assert (side_by_side(mine, steps=3).seed, side_by_side(mine, steps=3).sampling.layout) == (7, "train")


def tiny_one_layer() -> ModelConfig:
    return load_config("tiny", SMALL).model


def test_matmul_peak_counts_two_n_cubed_flops_per_product():
    n = 64
    a, b, matmul = sharded_operands(n)  # one [n, n] @ [n, n] on each of the 8 test devices
    devices = a.shape[0]
    assert devices == 8
    per_device = matmul.lower(a, b).compile().cost_analysis()["flops"]  # XLA's count, per device program
    assert per_device == 2 * n**3
    np.testing.assert_allclose(np.asarray(matmul(a, b)), np.einsum("dij,djk->dik", np.asarray(a), np.asarray(b)),
                               rtol=1e-4, atol=1e-3)
    peak = matmul_peak(n, repeats=1)
    assert matmul_flops(n) == 2 * n**3
    assert peak["matmul_flops_per_call"] == devices * 2 * n**3
    assert peak["matmul_peak_flops"] == peak["matmul_flops_per_call"] / peak["matmul_seconds"]


def test_train_step_flops_match_a_hand_count():
    cfg = ModelConfig(family="qwen3_moe", vocab_size=64, hidden_size=16, moe_intermediate_size=8,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                      n_routed_experts=4, num_experts_per_tok=2)
    attention = 16 * 4 * 8 + 2 * (16 * 2 * 8) + 4 * 8 * 16 + 8 + 8  # q, k and v, o, q_norm and k_norm
    moe = 16 * 4 + 2 * 3 * 16 * 8  # router, two active SwiGLU experts
    layer = attention + 2 * 16 + moe  # plus the two layer norms
    n = 2 * layer + 16 + 16 * 64  # final norm, LM head; the embedding lookup is not a matmul
    rows, seq = 3, 10
    attention_scores = 3 * 2 * rows * seq * seq * 4 * (8 + 8) * 2  # fwd + bwd, QK^T and PV, 2 layers
    assert n == 5872
    assert train_step_flops(cfg, rows, seq) == 6 * n * rows * seq + attention_scores == 1_287_360
    tied = dataclasses.replace(cfg, tie_word_embeddings=True)  # the table is the head: counted once
    assert train_step_flops(tied, rows, seq) == 6 * n * rows * seq + attention_scores


def test_moe_comparison_keeps_top_k_and_active_parameters():
    base = with_experts(tiny_one_layer(), 8)
    wide = with_experts(base, 64, active=moe_active_params(base))
    assert wide.num_experts_per_tok == base.num_experts_per_tok and wide.n_routed_experts == 64
    per_width = 3 * base.hidden_size * (base.num_experts_per_tok + base.n_shared_experts)
    assert abs(moe_active_params(wide) - moe_active_params(base)) <= per_width / 2
    for cfg in (base, wide):  # the formula against the layer's real parameters
        _, params, _ = nnx.split(nnx.eval_shape(lambda: MoE(cfg, nnx.Rngs(0))), nnx.Param, ...)
        sizes = {path: math.prod(v.shape) for path, v in nnx.to_flat_state(params)}
        routed = sum(s for p, s in sizes.items() if p[0] in ("gate_proj", "up_proj", "down_proj"))
        unused = routed * (cfg.n_routed_experts - cfg.num_experts_per_tok) // cfg.n_routed_experts
        assert sum(sizes.values()) - unused == moe_active_params(cfg)


def test_longtail_lengths_are_mostly_an_eighth_of_the_budget_with_a_few_full_rows():
    for rows, budget in ((8, 16), (64, 128), (256, 1024)):
        lengths = longtail_lengths(rows, budget)
        assert set(lengths.tolist()) <= {budget // 8, budget} and (lengths == budget).sum() >= 1
        assert (lengths == budget // 8).mean() >= 0.75
    assert np.array_equal(longtail_lengths(64, 128), longtail_lengths(64, 128))  # stable from run to run


def test_the_bench_samples_in_the_layout_the_trainer_samples_in():
    """On a multi-device mesh the sampler's figures run in the sampler's own layout (rl.sampler_layout), not in
    the training layout, where every decode step would gather the FSDP-split weights; the tokens are the
    one-device policy's."""
    config = load_config("tiny", SMALL)
    mesh = build_mesh(config.sharding)  # the preset's training mesh on the 8 test devices: fsdp 8
    rules = config.sharding.logical_rules()
    with use_mesh(mesh, rules):
        policy = init_policy(config.model, config.seed, mesh, rules)
    graphdef, state, sample_mesh, sample_rules, which = sampler_policy(config, policy, mesh, rules)
    assert mesh.shape["fsdp"] == 8 and which.startswith("inference (data=1 fsdp=1 ")
    assert sample_mesh.shape["fsdp"] == 1 and sample_mesh.shape["tensor"] * sample_mesh.shape["expert"] == 8
    placed = tree_shardings(state, sample_mesh, sample_rules)
    assert all(leaf.sharding == want for leaf, want in zip(jax.tree.leaves(state), jax.tree.leaves(placed)))
    prompts_BP = bench_prompts(config.model.vocab_size, 8, 6)
    with use_mesh(sample_mesh, sample_rules):
        got = greedy_generate(graphdef, state, prompts_BP, 5)()
    one_device = jax.device_put(nnx.split(policy), jax.devices()[0])
    expected = greedy_generate(*one_device, prompts_BP, 5)()
    assert np.array_equal(np.asarray(got.tokens_BT), np.asarray(expected.tokens_BT))
    # one device: the training layout
    single = build_mesh(config.sharding, jax.devices()[:1])
    with use_mesh(single, rules):
        alone = init_policy(config.model, config.seed, single, rules)
    assert sampler_policy(config, alone, single, rules)[4] == "training"
