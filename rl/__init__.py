"""r1jax's reinforcement-learning side: tasks, rewards, sampler, GRPO, trainer and the CLI."""
