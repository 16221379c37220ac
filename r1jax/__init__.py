"""r1jax: the DeepSeek-R1 recipe (GRPO with rule-based rewards) for mixture-of-experts policies, in JAX.

One installed namespace. The repository keeps the card's folders at its root and installs them here:
`r1jax.sharding` (meshes, logical-axis rules; depends on no other project package), `r1jax.model` (the
policy, tokenizers, Hugging Face interop; depends on `sharding`) and `r1jax.rl` (tasks, rewards, sampler,
GRPO, trainer, CLI; depends on both). This package itself holds only what all three may share
(`r1jax.errors`). See ARCHITECTURE.md.
"""
