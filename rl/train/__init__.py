"""The trainer: run directory, stages (SFT, GRPO, ...), checkpoints, metrics and plots."""
