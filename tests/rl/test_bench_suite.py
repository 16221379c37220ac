"""`run_bench`'s wiring with every part stubbed (nothing compiles): the sizes each part is given (README,
Benchmarks: 64 prompts of 32 tokens, 128 new; 32 x 8 long-tail rows in 64 slots; 64 train rows; 6 staleness steps,
2 warm-up), the keys of parts not run present as null, and every figure's goal."""

import numpy as np

from r1jax.rl.bench import suite
from r1jax.rl.bench.hf import KEYS as HF_KEYS
from r1jax.rl.bench.report import FIGURES
from r1jax.rl.bench.staleness import KEYS as STALENESS_KEYS


def stub_parts(monkeypatch):
    calls = {}

    def part(name, figures):
        def run(*args, **kwargs):
            calls[name] = (args, kwargs)
            return dict(figures)
        monkeypatch.setattr(suite, name, run)

    monkeypatch.setattr(suite, "init_policy", lambda *args: "policy")
    monkeypatch.setattr(suite, "sampler_policy", lambda config, policy, mesh, rules: (None, None, mesh, rules,
                                                                                     "training"))
    part("sampler_figures", {"decode_tokens_per_s": 10.0})
    part("longtail_figures", {"longtail_speedup": 3.5})
    part("train_figures", {"mfu": 0.4})
    part("grpo_step_figures", {"grpo_generated_tokens_per_s": 100.0})
    part("staleness_figures", {"staleness_speedup": 1.4})
    part("moe_figures", {"moe_step_ratio_64_vs_8": 1.2})
    part("pool_figures", {"pool_scaling": 1.8})
    part("code_figures", {"code_scaling": None})
    return calls


def test_the_full_bench_gives_each_part_the_readmes_sizes(monkeypatch):
    calls = stub_parts(monkeypatch)
    result = suite.run_bench("tiny", quick=False, workers=(1, 3), say=lambda message: None)
    (_, _, prompts_BP, new_tokens, repeats), _ = calls["sampler_figures"]
    assert prompts_BP.shape == (64, 32) and (new_tokens, repeats) == (128, 3)
    (_, _, longtail_prompts, samples, budget, slots, tail, *_), _ = calls["longtail_figures"]
    assert np.array_equal(longtail_prompts, prompts_BP[:32]) and (samples, budget, slots) == (8, 128, 64)
    assert tail == (32, 16, 8, 4, 2, 1)
    assert calls["train_figures"][0][4:] == (64, 32, 128, 4096, 3)  # rows, prompt, new tokens, matmul n, repeats
    grpo_config, warmup = calls["grpo_step_figures"][0]
    assert warmup == 2 and grpo_config.stages[0].steps == 8
    staleness_config, warmup = calls["staleness_figures"][0]
    assert warmup == 2 and staleness_config.stages[0].steps == 6
    assert calls["moe_figures"][0][1:] == (8192, 3) and calls["pool_figures"][0] == (600, (1, 3))
    assert calls["code_figures"][0] == (200, (1, 3))  # the --workers given
    assert set(result["goals"]) == {f.key for f in FIGURES}
    assert result["goals"]["longtail_speedup"] == {"target": ">= 3", "met": True}
    assert result["goals"]["mfu"] == {"target": ">= 0.5", "met": False}
    assert result["staleness_speedup"] == 1.4 and all(result[k] is None for k in HF_KEYS)


def test_parts_a_quick_bench_skips_are_null_in_its_json(monkeypatch):
    calls = stub_parts(monkeypatch)
    result = suite.run_bench("tiny", quick=True, workers=(1,), say=lambda message: None)
    assert "staleness_figures" not in calls and "hf_figures" not in calls
    assert all(k in result and result[k] is None for k in STALENESS_KEYS + HF_KEYS)
    assert result["quick"] is True and len(result["device"]["load_average_end"]) == 3
