"""`r1jax bench`: throughput figures of this machine, each against its goal where it has one.

One module per figure: `matmul` (the machine's measured matmul peak), `flops` (model FLOPs of a train
step), `sampler` (prefill/decode tokens/s, decode step at cache position 128 vs 1024), `train_step` (the
jitted GRPO update: tokens/s and MFU), `moe` (MoE layer step at 8 vs 64 experts), `reward_pool`
(verifications/s with 1 vs N workers), `hf` (the same weights through transformers' generate), `report`
(goals, JSON and the table) and `suite` (one run: sizes, order, the shared policy).
"""
