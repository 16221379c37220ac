"""`export-gguf` read back with llama.cpp's reader, against values computed here from the config and from
llama.cpp's own tables in `gguf` (MODEL_TENSORS, TENSOR_NAMES), never from rl.gguf_export's helpers.

Configs take values that differ from each other and from the defaults, so a key written from the wrong field
(q_lora_rank for kv_lora_rank, beta_slow for beta_fast) or a constant shows."""

import dataclasses

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file

from r1jax.model.factory import init_policy
from r1jax.model.hf_io import export_hf
from r1jax.model.tokenizer import train_tokenizer
from r1jax.rl.gguf_export import export_gguf
from tests.model.tiny import DEEPSEEK, QWEN
from tests.rl.test_export_gguf import CORPUS, VOCAB, read

DS = dataclasses.replace(DEEPSEEK, vocab_size=VOCAB, num_hidden_layers=4, first_k_dense_replace=2,
                         n_shared_experts=2, kv_lora_rank=32, qk_nope_head_dim=24, v_head_dim=16, n_routed_experts=16,
                         num_experts_per_tok=3, routed_scaling_factor=2.5, rope_theta=5e5, max_position_embeddings=1024,
                         intermediate_size=48, moe_intermediate_size=24)
QW = dataclasses.replace(QWEN, vocab_size=VOCAB, mlp_only_layers=(), rope_theta=1e6, max_position_embeddings=512,
                         rms_norm_eps=1e-5, n_routed_experts=16, num_experts_per_tok=3, intermediate_size=48,
                         moe_intermediate_size=24, num_key_value_heads=1, head_dim=16)
DS_YARN = dataclasses.replace(DS, rope_type="yarn", rope_factor=8.0, rope_original_max_position_embeddings=128,
                              rope_beta_fast=24.0, rope_beta_slow=2.0, rope_mscale=0.5, rope_mscale_all_dim=0.5)
QW_YARN = dataclasses.replace(QW, rope_type="yarn", rope_factor=4.0, rope_original_max_position_embeddings=128,
                              rope_beta_fast=16.0, rope_beta_slow=3.0)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, 300)


@pytest.fixture(scope="module")
def exported(tokenizer, tmp_path_factory):
    """name -> (fields, tensors, cfg) of each config exported at f32."""
    directory = tmp_path_factory.mktemp("gguf")
    out = {}
    for name, cfg in {"ds": DS, "qw": QW, "ds_yarn": DS_YARN, "qw_yarn": QW_YARN}.items():
        export_gguf(init_policy(cfg, 1), directory / f"{name}.gguf", tokenizer, "f32")
        out[name] = (*read(directory / f"{name}.gguf"), cfg)
    return out


def arch_keys(fields, arch):
    return {k[len(arch) + 1:]: v for k, v in fields.items() if k.startswith(arch + ".")}


def test_deepseek2_metadata_is_the_configs(exported):
    fields, _, c = exported["ds"]
    assert arch_keys(fields, "deepseek2") == pytest.approx({
        "vocab_size": c.vocab_size, "context_length": 1024, "embedding_length": c.hidden_size, "block_count": 4,
        "feed_forward_length": 48, "attention.head_count": c.num_attention_heads, "attention.head_count_kv": 1,
        "attention.layer_norm_rms_epsilon": c.rms_norm_eps, "rope.freq_base": 5e5, "rope.scaling.type": "none",
        "rope.dimension_count": c.qk_rope_head_dim, "leading_dense_block_count": 2,
        "attention.q_lora_rank": c.q_lora_rank, "attention.kv_lora_rank": 32,
        "attention.key_length": 32 + 8, "attention.value_length": 32,
        "attention.key_length_mla": 24 + 8, "attention.value_length_mla": 16, "expert_count": 16,
        "expert_used_count": 3, "expert_feed_forward_length": 24,
        "expert_shared_count": 2, "expert_weights_scale": 2.5, "expert_weights_norm": c.norm_topk_prob,
        "expert_gating_func": int(gguf.ExpertGatingFuncType.SIGMOID), "expert_group_count": c.n_group,
        "expert_group_used_count": c.topk_group})


def test_qwen3moe_metadata_is_the_configs(exported):
    fields, _, c = exported["qw"]
    assert arch_keys(fields, "qwen3moe") == pytest.approx({
        "vocab_size": c.vocab_size, "context_length": 512, "embedding_length": c.hidden_size,
        "block_count": 3, "feed_forward_length": 48, "attention.head_count": c.num_attention_heads,
        "attention.head_count_kv": 1, "attention.key_length": 16, "attention.value_length": 16,
        "attention.layer_norm_rms_epsilon": 1e-5, "rope.freq_base": 1e6, "rope.scaling.type": "none",
        "rope.dimension_count": 16, "expert_count": 16, "expert_used_count": 3,
        "expert_feed_forward_length": 24, "expert_shared_count": 0, "expert_weights_scale": 1.0,
        "expert_weights_norm": True, "expert_gating_func": int(gguf.ExpertGatingFuncType.SOFTMAX),
        "expert_group_count": 0, "expert_group_used_count": 0})
    assert fields["general.architecture"] == "qwen3moe" and fields["general.name"] == "qw"
    assert fields["general.quantization_version"] == gguf.GGML_QUANT_VERSION


@pytest.mark.parametrize("name, arch, log_mul", [("ds_yarn", "deepseek2", 0.05), ("qw_yarn", "qwen3moe", None)])
def test_yarn_keys_are_the_configs(exported, name, arch, log_mul):
    """llama.cpp reads the factor, the original context and both betas (llama_model::load_hparams); deepseek2
    also yarn_log_multiplier, 0.1 x mscale_all_dim (convert_hf_to_gguf.py's DeepseekV2Model), qwen3moe none."""
    fields, _, c = exported[name]
    keys = arch_keys(fields, arch)
    want = {"rope.scaling.type": "yarn", "rope.scaling.factor": c.rope_factor,
            "rope.scaling.original_context_length": 128, "rope.scaling.yarn_beta_fast": c.rope_beta_fast,
            "rope.scaling.yarn_beta_slow": c.rope_beta_slow}
    if log_mul is not None:
        want["rope.scaling.yarn_log_multiplier"] = log_mul
    assert {k: v for k, v in keys.items() if k.startswith("rope.scaling.")} == pytest.approx(want)
    assert keys["context_length"] == c.max_position_embeddings


@pytest.mark.parametrize("name, arch", [("ds", gguf.MODEL_ARCH.DEEPSEEK2), ("qw", gguf.MODEL_ARCH.QWEN3MOE)])
def test_every_tensor_name_is_one_llama_cpp_has_for_the_architecture(exported, name, arch):
    """Names from llama.cpp's own table (gguf.MODEL_TENSORS / TENSOR_NAMES); each layer has exactly the
    tensors of its kind (dense or MoE), and every tensor is stored with its numpy shape reversed."""
    _, tensors, c = exported[name]
    allowed = {gguf.TENSOR_NAMES[t].format(bid=i) + suffix for t in gguf.MODEL_TENSORS[arch]
               for i in range(c.num_hidden_layers) for suffix in (".weight", ".bias")}
    assert set(tensors) <= allowed, sorted(set(tensors) - allowed)
    dense_layers = c.first_k_dense_replace if c.is_deepseek else 0
    for i in range(c.num_hidden_layers):
        kinds = {n.split(".")[2] for n in tensors if n.startswith(f"blk.{i}.")}
        moe = {"ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"}
        assert (moe <= kinds) == (i >= dense_layers) and ("ffn_gate" in kinds) == (i < dense_layers), (i, kinds)
    e, hidden, width = c.n_routed_experts, c.hidden_size, c.moe_intermediate_size
    shapes = {"blk.3.ffn_gate_exps.weight": (e, width, hidden), "blk.3.ffn_up_exps.weight": (e, width, hidden),
              "blk.3.ffn_down_exps.weight": (e, hidden, width), "blk.0.ffn_norm.weight": (hidden,)}
    if c.is_deepseek:
        shapes.update({"blk.0.attn_k_b.weight": (c.num_attention_heads, 32, 24),
                       "blk.0.attn_v_b.weight": (c.num_attention_heads, 16, 32),
                       "blk.0.ffn_gate.weight": (48, hidden),
                       "blk.3.ffn_gate_shexp.weight": (2 * width, hidden), "blk.3.exp_probs_b.bias": (e,)})
    else:
        shapes = {k.replace("blk.3", "blk.2"): v for k, v in shapes.items()}
        shapes["blk.0.attn_k.weight"] = (c.num_key_value_heads * c.head_dim, hidden)
    for n, shape in shapes.items():
        assert tuple(int(d) for d in tensors[n].shape) == shape[::-1], n


def test_rope_halves_are_reordered_into_llama_cpps_adjacent_pairs(tokenizer, tmp_path):
    """HF's rope_interleave=False rotates rows (i, i + d/2) of each head's rope part; llama.cpp's deepseek2
    rotates (2i, 2i+1): q_b's and kv_a's rope rows are written in the order 0, d/2, 1, d/2 + 1, ...; nothing
    else moves (the nope rows, the latent rows, q_a, kv_b's split)."""
    cfg = dataclasses.replace(DS, rope_interleave=False)
    policy = init_policy(cfg, 2)
    export_hf(policy, tmp_path / "hf", "float32")
    export_gguf(policy, tmp_path / "m.gguf", tokenizer, "f32")
    hf = load_file(str(tmp_path / "hf" / "model.safetensors"))
    _, tensors = read(tmp_path / "m.gguf")
    nope, d, heads, rank = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.num_attention_heads, cfg.kv_lora_rank
    pairs = [j for i in range(d // 2) for j in (i, i + d // 2)]
    assert pairs[:4] == [0, d // 2, 1, d // 2 + 1]
    for layer in range(cfg.num_hidden_layers):
        p, b = f"model.layers.{layer}.self_attn.", f"blk.{layer}."
        q_b = hf[p + "q_b_proj.weight"].reshape(heads, nope + d, -1)
        want_q = np.concatenate([q_b[:, :nope], q_b[:, nope:][:, pairs]], axis=1).reshape(heads * (nope + d), -1)
        kv_a = hf[p + "kv_a_proj_with_mqa.weight"]
        want_kv = np.concatenate([kv_a[:rank], kv_a[rank:][pairs]])
        assert np.array_equal(np.asarray(tensors[b + "attn_q_b.weight"].data), want_q), layer
        assert np.array_equal(np.asarray(tensors[b + "attn_kv_a_mqa.weight"].data), want_kv), layer
        assert not np.array_equal(want_q, hf[p + "q_b_proj.weight"])  # the test can tell
        assert np.array_equal(np.asarray(tensors[b + "attn_q_a.weight"].data), hf[p + "q_a_proj.weight"])
        kv_b = hf[p + "kv_b_proj.weight"].reshape(heads, nope + cfg.v_head_dim, rank)
        assert np.array_equal(np.asarray(tensors[b + "attn_v_b.weight"].data), kv_b[:, nope:])


def test_a_tokenizer_with_more_tokens_than_the_model_has_rows_is_refused(tmp_path):
    """One token past the embedding rows is refused (llama.cpp needs one token per row); as many exports."""
    from r1jax.errors import UserError

    tok = train_tokenizer(CORPUS, VOCAB + 1)
    assert tok.vocab_size == VOCAB + 1
    with pytest.raises(UserError, match=rf"the tokenizer has {VOCAB + 1} tokens, more than the model's vocab_size "
                                        rf"{VOCAB}"):
        export_gguf(init_policy(QW, 0), tmp_path / "m.gguf", tok, "f32")
    assert list(tmp_path.iterdir()) == []


def test_byte_level_bpe_rows_past_the_tokenizer_are_unused_padding(tmp_path):
    """As convert_hf_to_gguf.py writes them: `[PAD<id>]` of type unused up to vocab_size; the vocabulary's own
    tokens normal (added ones aside); padding_token_id the id of tokenizer_config.json's pad_token; an
    out-of-range bos_token_id in generation_config.json ignored for <|endoftext|>."""
    import json

    from r1jax.model.tokenizer import HFTokenizer
    from tests.model.hf_tokenizer_files import write_hf_tokenizer

    directory = write_hf_tokenizer(tmp_path / "qwen", "qwen")
    data = json.loads((directory / "tokenizer.json").read_text())
    size = 1 + max([*data["model"]["vocab"].values(), *(t["id"] for t in data["added_tokens"])])
    rows = size + 40
    generation = json.loads((directory / "generation_config.json").read_text())
    (directory / "generation_config.json").write_text(json.dumps({**generation, "bos_token_id": rows + 5}))
    tok = HFTokenizer.load(directory)
    export_gguf(init_policy(dataclasses.replace(QW, vocab_size=rows), 0), tmp_path / "m.gguf", tok, "f32")
    fields, _ = read(tmp_path / "m.gguf")
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    assert tokens[size:] == [f"[PAD{i}]" for i in range(size, rows)]
    assert types[size:] == [gguf.TokenType.UNUSED] * (rows - size)
    added = {t["id"] for t in data["added_tokens"]}
    assert all(types[i] == gguf.TokenType.NORMAL for i in set(data["model"]["vocab"].values()) - added)
    pad = json.loads((directory / "tokenizer_config.json").read_text())["pad_token"]
    assert tokens[fields["tokenizer.ggml.padding_token_id"]] == pad
    assert tokens[fields["tokenizer.ggml.bos_token_id"]] == "<|endoftext|>"
    assert fields["tokenizer.ggml.add_eos_token"] is False  # transformers' encode puts no eos last


def test_sentencepiece_keys_are_those_of_llama_cpps_spm_converter(exported, tokenizer):
    """tokenizer.ggml.model llama with pre `default` and no eos appended, one token per embedding row."""
    fields, _, c = exported["qw"]
    assert (fields["tokenizer.ggml.model"], fields["tokenizer.ggml.pre"]) == ("llama", "default")
    assert fields["tokenizer.ggml.add_eos_token"] is False
    assert len(fields["tokenizer.ggml.tokens"]) == len(fields["tokenizer.ggml.scores"]) == c.vocab_size
    assert fields["tokenizer.ggml.tokens"][fields["tokenizer.ggml.unknown_token_id"]] == "<unk>"


def test_an_existing_output_is_replaced_only_when_forced(tokenizer, tmp_path):
    """export_gguf itself (not only the CLI) refuses to overwrite a file; force replaces it with a GGUF."""
    from r1jax.errors import UserError

    out = tmp_path / "m.gguf"
    out.write_bytes(b"keep")
    policy = init_policy(QW, 0)
    with pytest.raises(UserError, match=rf"output {str(out)!r} exists; pass --force to replace it"):
        export_gguf(policy, out, tokenizer, "f32")
    assert out.read_bytes() == b"keep" and sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]
    export_gguf(policy, out, tokenizer, "f32", force=True)
    assert read(out)[0]["general.architecture"] == "qwen3moe"
