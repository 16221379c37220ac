"""The same weights through Hugging Face transformers: greedy `generate` on the same prompts (torch, on the
GPU when JAX runs on one and torch sees CUDA, else on the CPU: `hf_device`).

The policy is exported with `model.hf_io.export_hf` (float32) and loaded with `AutoModelForCausalLM`
(transformers' default attention); HF prefill and decode are timed exactly as the sampler's are (a
one-token generate, then the full one; `timing.decode_tokens_per_s`), EOS disabled so every row
runs to N tokens. transformers and torch are bench/interop-only dependencies, imported here only.
HF runs with 1 torch thread and with torch's default count; the faster is the baseline (`hf_torch_threads`),
and the ratio `decode_speedup_vs_hf` comes from a last timing of both sides in turns, the sampler's one-token and
full generates beside HF's (`best_seconds_in_turns`): until 2026-12-04 the sampler's figure came from its own
part of the bench, minutes before HF's, so a change in the machine's load between them moved the ratio.
`hf_greedy_token_match` is the fraction of generated tokens that equal the sampler's greedy tokens: near 1
says both ran the same model (random weights make near-ties, so a late flip or two is expected).
"""

from __future__ import annotations

import tempfile

import numpy as np

from r1jax.model.hf_io import export_hf
from r1jax.rl.bench.timing import best_seconds, best_seconds_in_turns, decode_tokens_per_s

# null in the JSON of a run without --against hf
KEYS = ("hf_prefill_tokens_per_s", "hf_decode_tokens_per_s", "hf_decode_tokens_per_s_by_threads",
        "hf_torch_threads", "hf_device", "hf_greedy_token_match", "decode_tokens_per_s_beside_hf",
        "decode_speedup_vs_hf")


def torch_device() -> str:
    """Where HF runs: beside the sampler, so both sides of `decode_speedup_vs_hf` use the same hardware."""
    import jax
    import torch

    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def load_exported(policy):
    """The policy as a transformers model (float32, eval mode), through an exported checkpoint."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="r1jax-bench-hf-") as tmp:
        export_hf(policy, tmp, dtype="float32")
        model = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
    return model.to(torch_device()).eval()


def hf_generate(model, prompts_BP: np.ndarray, new_tokens: int):
    """A no-argument function: HF greedy generate of `new_tokens` tokens per prompt ([B, P + N] ids)."""
    import torch

    input_ids = torch.from_numpy(prompts_BP.astype(np.int64)).to(model.device)
    attention_mask = torch.ones_like(input_ids)

    def generate():
        with torch.inference_mode():
            out = model.generate(input_ids, attention_mask=attention_mask, do_sample=False,
                                 max_new_tokens=new_tokens, min_new_tokens=new_tokens, eos_token_id=None,
                                 pad_token_id=0)
        return out.cpu()  # waits for the device's last kernels
    return generate


def hf_timing(model, prompts_BP: np.ndarray, new_tokens: int, repeats: int,
              baseline_s: float | None = None) -> tuple[float, float]:
    """(best seconds of a one-token generate, of the full generate); the model has run once already. A
    full generate already over twice `baseline_s` (another setting's best) is not repeated: it cannot win."""
    prefill_s = best_seconds(hf_generate(model, prompts_BP, 1), repeats=repeats)
    full = hf_generate(model, prompts_BP, new_tokens)
    full_s = best_seconds(full, repeats=1, warm_up=False)
    if repeats > 1 and (baseline_s is None or full_s <= 2 * baseline_s):
        full_s = min(full_s, best_seconds(full, repeats=repeats - 1, warm_up=False))
    return prefill_s, full_s


def hf_figures(policy, prompts_BP: np.ndarray, new_tokens: int, our_generates: tuple, our_tokens_BN: np.ndarray,
               repeats: int = 3) -> dict:
    """HF timed with 1 torch thread and with torch's default; the faster is the baseline (on a loaded
    machine torch's threads can wait on each other for a hundredfold slowdown); then, with it, the sampler's
    one-token and full generates (`our_generates`, no-argument functions) and HF's, in turns."""
    import torch

    model = load_exported(policy)
    batch, prompt_len = prompts_BP.shape
    default = torch.get_num_threads()
    timings = {}
    try:
        torch.set_num_threads(1)
        their_tokens_BN = hf_generate(model, prompts_BP, new_tokens)().numpy()[:, prompt_len:]  # and warm-up
        for threads in sorted({1, default}):
            torch.set_num_threads(threads)
            baseline_s = timings[1][1] if 1 in timings else None
            timings[threads] = hf_timing(model, prompts_BP, new_tokens, repeats, baseline_s)
        rates = {t: decode_tokens_per_s(batch, new_tokens, *timing) for t, timing in timings.items()}
        best = max(rates, key=rates.get)
        torch.set_num_threads(best)
        ours_one, ours_full, hf_one, hf_full = best_seconds_in_turns(
            *our_generates, hf_generate(model, prompts_BP, 1), hf_generate(model, prompts_BP, new_tokens),
            repeats=repeats)
    finally:
        torch.set_num_threads(default)
    ours, theirs = (decode_tokens_per_s(batch, new_tokens, one, full) for one, full in ((ours_one, ours_full),
                                                                                        (hf_one, hf_full)))
    return {"hf_prefill_tokens_per_s": batch * prompt_len / hf_one,
            "hf_decode_tokens_per_s": theirs, "hf_torch_threads": best, "hf_device": str(model.device),
            "hf_decode_tokens_per_s_by_threads": {str(t): r for t, r in rates.items()},
            "hf_greedy_token_match": float(np.mean(their_tokens_BN == our_tokens_BN)),
            "decode_tokens_per_s_beside_hf": ours, "decode_speedup_vs_hf": ours / theirs}
