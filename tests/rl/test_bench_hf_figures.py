"""rl/bench/hf.py's arithmetic and plumbing with a stand-in for the transformers model and the timers (the
repository's only test of it is the 5-minute `r1jax bench --against hf` subprocess, which checks ratios of the
figures to each other, not which timing each figure comes from)."""

import numpy as np
import pytest
import torch

from r1jax.rl.bench import hf


class FakeModel:
    """`generate` appends tokens 100, 101, ... to each row; records its keyword arguments."""
    device = torch.device("cpu")

    def __init__(self):
        self.calls = []

    def generate(self, input_ids, **kwargs):
        self.calls.append({"dtype": input_ids.dtype, **kwargs})
        batch = input_ids.shape[0]
        new = torch.arange(100, 100 + kwargs["max_new_tokens"], dtype=input_ids.dtype).repeat(batch, 1)
        return torch.cat([input_ids, new], dim=1)


def test_hf_generate_is_greedy_for_exactly_n_tokens_with_eos_off():
    model = FakeModel()
    prompts = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int32)
    out = hf.hf_generate(model, prompts, 4)()
    assert out.tolist() == [[1, 2, 3, 100, 101, 102, 103], [4, 5, 6, 100, 101, 102, 103]]
    (call,) = model.calls
    assert call["dtype"] == torch.int64 and call["do_sample"] is False
    assert call["max_new_tokens"] == 4 and call["min_new_tokens"] == 4 and call["eos_token_id"] is None
    assert call["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 1]]


def timer(model, seconds):
    """A stand-in for best_seconds: runs `fn` once and answers `seconds[(threads, new_tokens)]`."""
    log = []

    def best_seconds(fn, repeats=3, warm_up=True):
        fn()
        key = (torch.get_num_threads(), model.calls[-1]["max_new_tokens"])
        log.append((*key, repeats, warm_up))
        return seconds[key]
    return best_seconds, log


def test_a_full_generate_over_twice_the_baseline_is_not_repeated(monkeypatch):
    model = FakeModel()
    prompts = np.zeros((1, 2), dtype=np.int32)
    threads = torch.get_num_threads()
    fake, log = timer(model, {(threads, 1): 0.1, (threads, 5): 3.0})
    monkeypatch.setattr(hf, "best_seconds", fake)
    assert hf.hf_timing(model, prompts, 5, repeats=3, baseline_s=1.4) == (0.1, 3.0)  # 3.0 > 2 x 1.4: once
    assert log == [(threads, 1, 3, True), (threads, 5, 1, False)]
    log.clear()
    assert hf.hf_timing(model, prompts, 5, repeats=3, baseline_s=1.5) == (0.1, 3.0)  # 3.0 <= 2 x 1.5: again
    assert log == [(threads, 1, 3, True), (threads, 5, 1, False), (threads, 5, 2, False)]
    log.clear()
    hf.hf_timing(model, prompts, 5, repeats=3)  # no baseline (the first setting): repeated
    assert log[-1] == (threads, 5, 2, False)
    log.clear()
    hf.hf_timing(model, prompts, 5, repeats=1)  # one repeat asked: one full generate
    assert log == [(threads, 1, 1, True), (threads, 5, 1, False)]


def test_hf_figures_from_hand_computed_timings(monkeypatch):
    default = torch.get_num_threads()
    torch.set_num_threads(4)  # torch's default here: HF is timed with 1 and with 4 threads
    try:
        model = FakeModel()
        monkeypatch.setattr(hf, "load_exported", lambda policy: model)
        # 1 thread: one-token 0.1 s, full 0.6 s -> 2 x 4 / 0.5 = 16 tokens/s, the baseline;
        # 4 threads: 0.1 s / 1.5 s -> 2 x 4 / 1.4 tokens/s, its full generate over 2 x 0.6 s: not repeated
        fake, log = timer(model, {(1, 1): 0.1, (1, 5): 0.6, (4, 1): 0.1, (4, 5): 1.5})
        monkeypatch.setattr(hf, "best_seconds", fake)
        turns = []

        def in_turns(*fns, repeats=3, warm_up=True):
            turns.append((len(fns), repeats, torch.get_num_threads()))
            return [0.05, 0.45, 0.2, 2.2]  # ours one-token, ours full, HF one-token, HF full
        monkeypatch.setattr(hf, "best_seconds_in_turns", in_turns)
        prompts = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int32)  # B 2, P 3
        ours = np.array([[100, 101, 102, 103, 104], [100, 101, 999, 103, 104]])  # 9 of 10 tokens agree
        figures = hf.hf_figures(None, prompts, 5, (lambda: None, lambda: None), ours, repeats=3)
        assert torch.get_num_threads() == 4  # restored
    finally:
        torch.set_num_threads(default)
    assert log == [(1, 1, 3, True), (1, 5, 1, False), (1, 5, 2, False), (4, 1, 3, True), (4, 5, 1, False)]
    assert turns == [(4, 3, 1)]  # then timed in turns with the faster thread count, 1
    assert figures["hf_decode_tokens_per_s_by_threads"] == {"1": pytest.approx(16.0), "4": pytest.approx(8 / 1.4)}
    assert figures["hf_torch_threads"] == 1
    assert figures["hf_prefill_tokens_per_s"] == pytest.approx(2 * 3 / 0.2)  # B x P over HF's one-token generate
    assert figures["hf_decode_tokens_per_s"] == pytest.approx(2 * 4 / (2.2 - 0.2))
    assert figures["decode_tokens_per_s_beside_hf"] == pytest.approx(2 * 4 / (0.45 - 0.05))
    assert figures["decode_speedup_vs_hf"] == pytest.approx(20.0 / 4.0)
    assert figures["hf_greedy_token_match"] == pytest.approx(0.9)
    assert figures["hf_device"] == "cpu"
    assert set(figures) == set(hf.KEYS)
