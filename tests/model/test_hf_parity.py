"""r1jax's forward pass equals Hugging Face transformers' on the same weights (float32)."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from r1jax.model.hf_io import HFCheckpoint, import_params
from r1jax.model.hf_weights import tensor_map
from tests.model.hf_models import hf_tensors, random_hf_model
from tests.model.tiny import DEEPSEEK, QWEN

CASES = {
    "qwen_sparse_step_and_dense_layer": dataclasses.replace(QWEN, decoder_sparse_step=1, mlp_only_layers=(1,)),
    "qwen_tied_no_norm_topk": dataclasses.replace(QWEN, tie_word_embeddings=True, norm_topk_prob=False,
                                                  mlp_only_layers=(), attention_bias=True),
    "deepseek_groups_shared_dense_first": DEEPSEEK,
    "deepseek_no_q_lora_no_dense": dataclasses.replace(DEEPSEEK, q_lora_rank=None, first_k_dense_replace=0,
                                                       n_group=1, topk_group=1, norm_topk_prob=False,
                                                       rope_interleave=False, n_shared_experts=2),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(case, tmp_path):
    cfg = CASES[case]
    # weights of std 0.3: at HF's 0.02 a routing bias of 3.0 still matched to 1e-7 (expert outputs too small)
    hf = random_hf_model(cfg, seed=1, bias_scale=1.0, initializer_range=0.3)
    tensors = hf_tensors(hf, tmp_path)
    assert sorted(tensors) == sorted(t.hf_name for t in tensor_map(cfg))
    with HFCheckpoint(tmp_path) as ckpt:  # the import path load_hf_policy takes
        policy = import_params(ckpt, cfg)
    tokens = np.random.RandomState(0).randint(0, cfg.vocab_size, (3, 10))
    mask = np.ones((3, 10), bool)
    mask[1, 6:] = False  # right padding
    with torch.no_grad():
        theirs = hf(torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64))).logits.numpy()
    ours = np.asarray(policy(jnp.asarray(tokens), valid_BT=jnp.asarray(mask)).logits_BTV)
    assert np.abs(theirs[mask]).max() > 1.0  # logits large enough that a wrong expert or weight shows
    np.testing.assert_allclose(ours[mask], theirs[mask], atol=1e-4, rtol=0)


@pytest.mark.parametrize("family_cfg", [QWEN, DEEPSEEK], ids=["qwen3_moe", "deepseek_v3"])
def test_every_norm_uses_transformers_epsilon(family_cfg):
    """With rms_norm_eps 1e-2 (not the usual 1e-6), each kind of norm takes the epsilon transformers gives it:
    the config's for the layer and q/k norms, a fixed 1e-6 for MLA's q_a / kv_a norms (an epsilon of 1e-5 there
    passes the logits comparison above at its activations)."""
    from flax import nnx

    from r1jax.model.factory import init_policy
    from r1jax.model.layers import RMSNorm

    cfg = dataclasses.replace(family_cfg, rms_norm_eps=1e-2)
    theirs, ours = {}, {}
    for name, module in random_hf_model(cfg).named_modules():
        if hasattr(module, "variance_epsilon"):
            theirs.setdefault(name.rsplit(".", 1)[-1], set()).add(module.variance_epsilon)
    for path, module in nnx.iter_graph(init_policy(cfg, seed=0)):
        if isinstance(module, RMSNorm):
            ours.setdefault(path[-1], set()).add(module.eps)
    assert ours == theirs and len(ours) >= 4, (ours, theirs)
