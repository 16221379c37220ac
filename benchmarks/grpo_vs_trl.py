"""GRPO steps side by side with TRL's GRPOTrainer: same weights, tokenizer, prompts, rewards and settings.

    pip install trl==1.16.0   # benchmark only: r1jax never imports TRL
    python benchmarks/grpo_vs_trl.py [--preset bench_qwen3] [--steps 8] [--warmup 2] [--cpu-devices N] [--json]
                                     [KEY=VALUE ...]

1. r1jax: `r1jax.rl.bench.grpo_step` runs the preset's GRPO stage through the trainer (from its random
   initialisation) and takes the medians of the steps after the warm-up.
2. That initialisation (`r1jax init`, the config's seed) is exported with `r1jax export-hf` (float32), so TRL
   starts from the weights r1jax started from (before 2026-12-04: from those it ended with), and its prompts are
   rendered by the same chat template.
3. TRL: `GRPOTrainer` on that directory with the preset's settings: P prompts x G samples per step (one
   generation batch per optimizer step), the token budget, temperature, learning rate, beta = 0, one
   iteration per batch, no gradient checkpointing (as the preset), the training problems r1jax's data iterator
   gave its steps in the same order (before 2026-12-04: the source's first ones in order, other problems than
   r1jax's shuffled ones), and the same rule rewards (r1jax's accuracy + format, called in-process). Torch runs
   with 1 thread or its default, whichever generates faster in a short probe before training (on a loaded
   2-core machine torch's 2 threads ran 88x slower than 1: `rl/bench/hf.py` chooses so too; before 2026-12-04
   TRL always ran with the default). Each step is timed from TRL's step-begin to step-end callbacks; generated
   tokens are its logged mean completion length x rows.
Completion lengths differ with each implementation's end-of-sequence odds, so the comparison is per
generated token: `speedup = r1jax generated tokens/s / TRL generated tokens/s` (issue #19's goal: >= 3).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from r1jax.rl.bench.grpo_step import grpo_rows, summarize_steps, trl_step_figures  # noqa: E402
from r1jax.rl.bench.hf import torch_device  # noqa: E402
from r1jax.rl.cli.main import fake_cpu_devices  # noqa: E402
from r1jax.rl.config import load_config  # noqa: E402
from r1jax.rl.bench.timing import best_seconds  # noqa: E402
from r1jax.rl.data import make_iterator  # noqa: E402
from r1jax.rl.host_allocator import retain_freed_memory  # noqa: E402
from r1jax.rl.host_info import host_info  # noqa: E402
from r1jax.rl.rewards import ScoreItem, combine, score_item  # noqa: E402


def trl_figures(config, model_dir: str, steps: int, warmup: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    grpo, sampling = config.grpo, config.sampling
    iterator = make_iterator(config.data, batch_size=grpo.prompts_per_step)  # as rl.train.stage_grpo draws them
    problems = [problem for _ in range(steps) for problem in next(iterator)]
    by_prompt = {p["prompt"]: p for p in problems}
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": p["prompt"]}], "question": p["prompt"]}
                                 for p in problems])

    def rule_rewards(completions, question, **_):
        out = []
        for messages, prompt in zip(completions, question):
            problem = by_prompt[prompt]
            item = ScoreItem(prompt=prompt, completion=messages[0]["content"], reference=str(problem["answer"]),
                             task=problem["task"])
            out.append(combine(score_item(item, config.rewards), config.rewards))
        return out

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds, self.start = [], 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.start)

    rows = grpo.prompts_per_step * grpo.group_size
    on_gpu = torch_device() == "cuda"  # TRL beside r1jax: on the GPU when JAX runs on one
    probe = {} if on_gpu else thread_probe(model_dir, rows, config.model.vocab_size)
    if probe:
        torch.set_num_threads(int(max(probe, key=probe.get)))
    args = GRPOConfig(output_dir=tempfile.mkdtemp(prefix="trl-grpo-"), per_device_train_batch_size=rows,
                      num_generations=grpo.group_size, max_completion_length=sampling.max_new_tokens,
                      temperature=grpo.temperature, top_p=1.0, learning_rate=config.optimizer.lr, beta=0.0,
                      num_iterations=1, max_steps=steps, logging_steps=1, use_cpu=not on_gpu, report_to="none",
                      save_strategy="no", bf16=False, seed=config.seed, shuffle_dataset=False,
                      gradient_checkpointing=False)  # TRL's default recomputes activations; r1jax's preset does not
    timer = StepTimer()
    trainer = GRPOTrainer(model=model_dir, reward_funcs=rule_rewards, args=args, train_dataset=dataset,
                          callbacks=[timer])
    with contextlib.redirect_stdout(sys.stderr):  # TRL prints its logs: stdout keeps --json's one object
        trainer.train()
    lengths = [row["completions/mean_length"] for row in trainer.state.log_history
               if "completions/mean_length" in row]
    return {**trl_step_figures(timer.seconds, lengths, rows, warmup), "torch_threads": torch.get_num_threads(),
            "trl_generate_tokens_per_s_by_threads": probe, "trl_device": torch_device()}


def thread_probe(model_dir: str, rows: int, vocab_size: int, new_tokens: int = 16) -> dict:
    """Greedy generate tokens/s of the exported model at 1 torch thread and at torch's default (rows x 16 new
    tokens after 16 random prompt tokens, best of 2): the faster count is the one TRL trains with."""
    import torch
    import transformers

    from r1jax.rl.bench.hf import hf_generate

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompts = np.random.default_rng(0).integers(1, vocab_size, (rows, 16))
    default, rates = torch.get_num_threads(), {}
    try:
        for threads in sorted({1, default}):
            torch.set_num_threads(threads)
            rates[str(threads)] = rows * new_tokens / best_seconds(hf_generate(model, prompts, new_tokens), repeats=2)
    finally:
        torch.set_num_threads(default)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="bench_qwen3")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--cpu-devices", type=int, metavar="N", default=None,
                        help="r1jax runs on N CPU devices (as `r1jax --cpu-devices N`; e.g. one per core)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.cpu_devices is not None:
        fake_cpu_devices(args.cpu_devices)  # before JAX starts its backends
    retain_freed_memory()  # as `r1jax` does on a CPU-only host (before JAX starts; TRL's torch gets it too)
    overrides = [f"stages.0.steps={args.steps}", *args.overrides]
    config = load_config(args.preset, overrides)
    load_start = [round(x, 2) for x in os.getloadavg()]
    if load_start[0] >= (os.cpu_count() or 1):
        print(f"load average {load_start[0]} at the start, at or past the {os.cpu_count()} cores: the figures will "
              "show the neighbours' load", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="grpo-vs-trl-") as work:
        run_dir, init_dir, model_dir = (os.path.join(work, name) for name in ("run", "init", "hf"))
        ours = summarize_steps(grpo_rows(config, run_dir), args.warmup)
        r1jax = [sys.executable, "-m", "r1jax", *([f"--cpu-devices={args.cpu_devices}"] if args.cpu_devices else [])]
        subprocess.run([*r1jax, "init", args.preset, init_dir, *overrides], check=True, stdout=subprocess.DEVNULL)
        subprocess.run([*r1jax, "export-hf", init_dir, model_dir, "--dtype", "float32", "--tokenizer",
                        os.path.join(run_dir, "tokenizer"), "--template", config.tokenizer.template], check=True,
                       stdout=subprocess.DEVNULL)  # the tokenizer the run trained with
        theirs = trl_figures(config, model_dir, args.steps, args.warmup)
    result = {"preset": args.preset, "overrides": args.overrides, "cpu_devices": args.cpu_devices, **ours, **theirs,
              "speedup_per_generated_token": ours["grpo_generated_tokens_per_s"] / theirs["trl_generated_tokens_per_s"],
              "load_average_start": load_start, "load_average_end": [round(x, 2) for x in os.getloadavg()],
              "host": host_info()}
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:32s} {value}")


if __name__ == "__main__":
    main()
