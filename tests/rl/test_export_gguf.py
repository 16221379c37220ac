"""`r1jax export-gguf`: the file read back with llama.cpp's own reader (gguf.GGUFReader).

Tensors are compared with an independent reference: the same policy exported by `export-hf` (itself checked
against transformers), rearranged here as llama.cpp's converter does (experts stacked per layer, kv_b split
per head into a transposed k_b and v_b), by a name table written out in this file. Metadata, storage types of
the quantised exports, and the CLI's refusals (existing output, dtype, models llama.cpp cannot run, no partial
file) are checked too. Tokenizer keys: test_export_gguf_vocab.py; running the files in llama.cpp:
test_export_gguf_llama.py.
"""

import dataclasses
import os
import re

import gguf
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from r1jax.model.factory import abstract_policy, init_policy
from r1jax.model.hf_io import export_hf, parameter_leaves
from r1jax.model.hf_tokenizer import chat_template
from r1jax.model.tokenizer import train_tokenizer
from r1jax.rl.checkpoint import save_policy
from r1jax.rl.cli.main import main
from r1jax.rl.config import load_config
from r1jax.rl.gguf_export import export_gguf, layout
from r1jax.rl.gguf_export.metadata import unsupported
from tests.model.tiny import DEEPSEEK, QWEN
from tests.rl.conftest import TRAIN_CONFIG

VOCAB = 320  # model rows; the sentencepiece tokenizer has 300 pieces
CONFIGS = {"qwen3_moe": dataclasses.replace(QWEN, vocab_size=VOCAB, mlp_only_layers=()),  # qwen3moe: all MoE
           "deepseek_v3": dataclasses.replace(DEEPSEEK, vocab_size=VOCAB)}
CORPUS = ["What is 12 + 35? <think> 12 + 35 = 47 </think> <answer>47</answer>",
          "The quick brown fox jumps over the lazy dog.", "Solve x^2 - 4 = 0 for x, then check."] * 30


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, 300)


def save_checkpoint(directory, cfg, tok, template="chat"):
    """A checkpoint of a random `cfg` policy carrying `tok`; returns the policy."""
    config = dataclasses.replace(load_config(TRAIN_CONFIG, [f"tokenizer.template={template}"]), model=cfg)
    policy = init_policy(cfg, 3)
    save_policy(directory, config, policy)
    tok.save(directory / "tokenizer")
    return policy


def read(path) -> tuple[dict[str, object], dict[str, gguf.ReaderTensor]]:
    reader = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items()}, {t.name: t for t in reader.tensors}


def expected_tensors(cfg, hf: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """llama.cpp's layout of an HF checkpoint, written out independently of rl.gguf_export."""
    out = {"token_embd.weight": hf["model.embed_tokens.weight"], "output_norm.weight": hf["model.norm.weight"],
           "output.weight": hf["lm_head.weight"]}
    for i in range(cfg.num_hidden_layers):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        names = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
                 "attn_output": "self_attn.o_proj"}
        if cfg.is_deepseek:
            names.update(attn_q_a="self_attn.q_a_proj", attn_q_b="self_attn.q_b_proj",
                         attn_q_a_norm="self_attn.q_a_layernorm", attn_kv_a_mqa="self_attn.kv_a_proj_with_mqa",
                         attn_kv_a_norm="self_attn.kv_a_layernorm")
            kv_b = hf[p + "self_attn.kv_b_proj.weight"].reshape(
                cfg.num_attention_heads, cfg.qk_nope_head_dim + cfg.v_head_dim, cfg.kv_lora_rank)
            out[b + "attn_k_b.weight"] = kv_b[:, :cfg.qk_nope_head_dim].transpose(0, 2, 1)
            out[b + "attn_v_b.weight"] = kv_b[:, cfg.qk_nope_head_dim:]
        else:
            names.update(attn_q="self_attn.q_proj", attn_k="self_attn.k_proj", attn_v="self_attn.v_proj",
                         attn_q_norm="self_attn.q_norm", attn_k_norm="self_attn.k_norm")
        if not cfg.layer_is_moe(i):
            names.update(ffn_gate="mlp.gate_proj", ffn_up="mlp.up_proj", ffn_down="mlp.down_proj")
        else:
            names["ffn_gate_inp"] = "mlp.gate"
            for proj in ("gate", "up", "down"):
                out[f"{b}ffn_{proj}_exps.weight"] = np.stack(
                    [hf[f"{p}mlp.experts.{e}.{proj}_proj.weight"] for e in range(cfg.n_routed_experts)])
            if cfg.is_deepseek:
                out[b + "exp_probs_b.bias"] = hf[p + "mlp.gate.e_score_correction_bias"]
                names.update(ffn_gate_shexp="mlp.shared_experts.gate_proj", ffn_up_shexp="mlp.shared_experts.up_proj",
                             ffn_down_shexp="mlp.shared_experts.down_proj")
        out.update({f"{b}{ours}.weight": hf[f"{p}{theirs}.weight"] for ours, theirs in names.items()})
    return out


# one expert: its stacked tensors [1, out, in] were taken for a lone tensor (an AssertionError's traceback)
LAYOUTS = {**CONFIGS, "qwen3_moe_one_expert": dataclasses.replace(CONFIGS["qwen3_moe"], n_routed_experts=1,
                                                                  num_experts_per_tok=1)}


@pytest.mark.parametrize("family", list(LAYOUTS))
def test_f32_tensors_equal_the_checkpoint_in_llama_cpp_layout(family, tokenizer, tmp_path):
    cfg = LAYOUTS[family]
    policy = init_policy(cfg, 3)
    export_hf(policy, tmp_path / "hf", "float32")
    export_gguf(policy, tmp_path / "m.gguf", tokenizer, "f32")
    _, tensors = read(tmp_path / "m.gguf")
    expected = expected_tensors(cfg, load_file(str(tmp_path / "hf" / "model.safetensors")))
    assert sorted(tensors) == sorted(expected)
    for name, want in expected.items():
        assert tensors[name].tensor_type == gguf.GGMLQuantizationType.F32, name
        assert np.array_equal(np.asarray(tensors[name].data), want), name


def test_metadata_states_every_architecture_and_routing_field(tokenizer, tmp_path):
    ds, qw = CONFIGS["deepseek_v3"], CONFIGS["qwen3_moe"]
    export_gguf(init_policy(ds, 0), tmp_path / "ds.gguf", tokenizer, "f32")
    fields, _ = read(tmp_path / "ds.gguf")
    a = "deepseek2."
    assert fields["general.architecture"] == "deepseek2" and fields["general.file_type"] == 0
    assert {k[len(a):]: v for k, v in fields.items() if k.startswith(a)} == pytest.approx({
        "vocab_size": VOCAB, "context_length": ds.max_position_embeddings, "embedding_length": 32,
        "block_count": 3, "feed_forward_length": 64, "attention.head_count": 4, "attention.head_count_kv": 1,
        "attention.layer_norm_rms_epsilon": 1e-6, "rope.freq_base": 10000.0, "rope.scaling.type": "none",
        "rope.dimension_count": 8, "leading_dense_block_count": 1, "attention.q_lora_rank": 16,
        "attention.kv_lora_rank": 16, "attention.key_length": 16 + 8, "attention.value_length": 16,
        "attention.key_length_mla": 16, "attention.value_length_mla": 8, "expert_count": 8,
        "expert_used_count": 2, "expert_feed_forward_length": 16, "expert_shared_count": 1,
        "expert_weights_scale": 2.0, "expert_weights_norm": True,
        "expert_gating_func": int(gguf.ExpertGatingFuncType.SIGMOID), "expert_group_count": 4,
        "expert_group_used_count": 2})
    # every group kept (topk_group == n_group) is routing without groups: one group, as llama.cpp requires
    export_gguf(init_policy(dataclasses.replace(ds, topk_group=4), 0), tmp_path / "all.gguf", tokenizer, "f32")
    fields, _ = read(tmp_path / "all.gguf")
    assert (fields[a + "expert_group_count"], fields[a + "expert_group_used_count"]) == (1, 1)
    # the config's own values, not the defaults (both were untested: a constant passed)
    export_gguf(init_policy(dataclasses.replace(ds, norm_topk_prob=False), 0), tmp_path / "nn.gguf", tokenizer, "f32")
    assert read(tmp_path / "nn.gguf")[0][a + "expert_weights_norm"] is False
    export_gguf(init_policy(dataclasses.replace(qw, rms_norm_eps=1e-5), 0), tmp_path / "eps.gguf", tokenizer, "f32")
    assert read(tmp_path / "eps.gguf")[0]["qwen3moe.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    export_gguf(init_policy(qw, 0), tmp_path / "qw.gguf", tokenizer, "f32")
    fields, _ = read(tmp_path / "qw.gguf")
    q = "qwen3moe."
    assert fields["general.architecture"] == "qwen3moe"
    assert {k: fields[q + k] for k in ("attention.head_count_kv", "attention.key_length", "attention.value_length",
                                        "rope.dimension_count", "expert_count", "expert_used_count",
                                        "expert_feed_forward_length", "expert_weights_norm", "expert_gating_func",
                                        "expert_shared_count", "expert_group_count")} == {
        "attention.head_count_kv": 2, "attention.key_length": 8, "attention.value_length": 8,
        "rope.dimension_count": 8, "expert_count": 8, "expert_used_count": 2, "expert_feed_forward_length": 16,
        "expert_weights_norm": True, "expert_gating_func": int(gguf.ExpertGatingFuncType.SOFTMAX),
        "expert_shared_count": 0, "expert_group_count": 0}


@pytest.mark.parametrize("layers, vocab, lite", [(26, VOCAB, True), (27, VOCAB, True), (48, 128256, True),
                                                 (3, VOCAB, False), (25, VOCAB, False), (48, VOCAB, False),
                                                 (61, 128256, False)])
def test_q_lora_rank_is_set_exactly_when_llama_cpp_reads_it(layers, vocab, lite):
    """llama.cpp's deepseek2 (llama_model_deepseek2::load_arch_hparams) takes a model of 26 or 27 layers, or of
    48 layers with a vocabulary of 128256, for lite: it reads no attention.q_lora_rank and loads blk.N.attn_q.
    So a q LoRA is refused there and a model without one everywhere else; a lite model without one exports
    attn_q."""
    cfg = dataclasses.replace(CONFIGS["deepseek_v3"], num_hidden_layers=layers, vocab_size=vocab)
    no_q_lora = dataclasses.replace(cfg, q_lora_rank=None)
    rule = (r"\(llama.cpp's deepseek2 reads attention.q_lora_rank unless the model has 26 or 27 layers, or 48 "
            r"layers with vocab_size 128256 \(a lite model")
    if not lite:
        assert unsupported(cfg) == []
        [why] = unsupported(no_q_lora)
        assert re.match(rf"q_lora_rank=null with num_hidden_layers={layers}, vocab_size={vocab} {rule}", why), why
        return
    [why] = unsupported(cfg)
    assert re.match(rf"q_lora_rank=16 with num_hidden_layers={layers}, vocab_size={vocab} {rule}.*; it would "
                    r"ignore the q LoRA and look for blk.N.attn_q.weight\)$", why), why
    assert unsupported(no_q_lora) == []
    leaves = parameter_leaves(nnx.to_pure_dict(nnx.state(abstract_policy(no_q_lora))))
    names = {e.name for e in layout.plan(no_q_lora, {p: tuple(v.shape) for p, v in leaves.items()}, "f32")}
    assert {f"blk.{i}.attn_q.weight" for i in range(layers)} <= names and not any("attn_q_a" in n for n in names)


@pytest.mark.parametrize("dtype", ["q8_0", "bf16"])
def test_quantised_exports_keep_norms_router_and_biases_in_f32(dtype, tokenizer, tmp_path):
    cfg = dataclasses.replace(CONFIGS["deepseek_v3"], hidden_size=64)  # rows of 64: q8_0 blocks of 32 fit
    policy = init_policy(cfg, 3)
    export_gguf(policy, tmp_path / "f32.gguf", tokenizer, "f32")
    export_gguf(policy, tmp_path / "q.gguf", tokenizer, dtype)
    fields, tensors = read(tmp_path / "q.gguf")
    _, exact = read(tmp_path / "f32.gguf")
    assert fields["general.file_type"] == layout.FILE_TYPES[dtype]
    assert fields["general.quantization_version"] == gguf.GGML_QUANT_VERSION  # llama.cpp's quantizer writes it
    wanted = layout.QTYPES[dtype]
    for name, t in tensors.items():
        shape = tuple(int(n) for n in reversed(t.shape))
        if len(shape) == 1 or name.endswith(("_norm.weight", "ffn_gate_inp.weight", ".bias")):
            assert t.tensor_type == gguf.GGMLQuantizationType.F32, name
        elif shape[-1] % 32:  # e.g. attn_k_b's rows of qk_nope 8: as llama.cpp's converter, f16
            assert t.tensor_type == (gguf.GGMLQuantizationType.F16 if dtype == "q8_0" else wanted), name
        else:
            assert t.tensor_type == wanted, name
        values = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape)
        want = np.asarray(exact[name].data)
        scale = np.abs(want).max()
        assert np.abs(values - want).max() <= (1 / 127 if dtype == "q8_0" else 2 ** -8) * scale, name
    assert "ffn_gate_exps.weight" in "".join(tensors) and wanted in {t.tensor_type for t in tensors.values()}


def test_cli_writes_the_file_and_refuses_bad_input_leaving_nothing_behind(tokenizer, tmp_path, capsys, monkeypatch):
    policy = save_checkpoint(tmp_path / "ck", CONFIGS["qwen3_moe"], tokenizer)
    out = tmp_path / "m.gguf"
    assert main(["export-gguf", str(tmp_path / "ck"), str(out)]) == 0
    assert "qwen3_moe as llama.cpp's qwen3moe, dtype f32" in capsys.readouterr().out
    assert read(out)[0]["tokenizer.chat_template"] == chat_template("chat")  # the checkpoint's prompt format
    # gathered from the checkpoint's sharded mesh: the same tensors as an export of the unsharded policy
    (tmp_path / "direct").mkdir()
    export_gguf(policy, tmp_path / "direct" / "m.gguf", tokenizer, "f32")
    sharded, direct = read(out)[1], read(tmp_path / "direct" / "m.gguf")[1]
    assert sharded.keys() == direct.keys()
    assert all(np.array_equal(np.asarray(sharded[k].data), np.asarray(direct[k].data)) for k in sharded)
    before = out.read_bytes()
    assert main(["export-gguf", str(tmp_path / "ck"), str(out), "--dtype", "q8_0"]) == 2
    assert f"output {str(out)!r} exists; pass --force" in capsys.readouterr().err
    assert main(["export-gguf", str(tmp_path / "ck"), str(tmp_path / "x.gguf"), "--dtype", "q4_k"]) == 2
    assert "--dtype 'q4_k': expected one of f32, f16, bf16, q8_0" in capsys.readouterr().err
    # a directory: said at once (it advised --force, which then loaded the weights and failed on the directory)
    assert main(["export-gguf", str(tmp_path / "ck"), str(tmp_path / "direct")]) == 2
    assert f"output {str(tmp_path / 'direct')!r} is a directory; give a file name such as" in capsys.readouterr().err
    os.mkfifo(tmp_path / "fifo")  # not a regular file: --force renamed over it (as root, /dev/full became a file)
    assert main(["export-gguf", str(tmp_path / "ck"), str(tmp_path / "fifo"), "--force"]) == 2
    assert "exists and is not a regular file" in capsys.readouterr().err and (tmp_path / "fifo").is_fifo()
    (tmp_path / "fifo").unlink()
    # a failure while writing leaves neither the output nor a temporary file, and an existing output intact
    calls = []

    def failing(entry, leaves):
        calls.append(entry.name)
        if len(calls) == 5:
            raise OSError("disk full")
        return real(entry, leaves)

    real = layout.tensor_data
    monkeypatch.setattr("r1jax.rl.gguf_export.tensor_data", failing)
    with pytest.raises(OSError, match="disk full"):
        main(["export-gguf", str(tmp_path / "ck"), str(out), "--force"])
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["ck", "direct", "m.gguf"]
    monkeypatch.undo()
    assert main(["export-gguf", str(tmp_path / "ck"), str(out), "--dtype", "bf16", "--force"]) == 0
    assert read(out)[0]["general.file_type"] == gguf.LlamaFileType.MOSTLY_BF16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "direct", "m.gguf"]


@pytest.mark.parametrize("change, why", [
    (dict(family="qwen3_moe", mlp_only_layers=(1,)), r"dense layers \[1\] .* qwen3moe makes every layer a MoE"),
    (dict(family="qwen3_moe", norm_topk_prob=False), "norm_topk_prob=false"),
    (dict(family="deepseek_v3", n_shared_experts=0), "n_shared_experts=0"),
    (dict(family="deepseek_v3", q_lora_rank=None), "q_lora_rank=null"),
    (dict(family="qwen3_moe", attention_bias=True), "attention_bias=true"),
    (dict(family="deepseek_v3", rms_norm_eps=1e-5), r"rms_norm_eps=1e-05 .* MLA q_a / kv_a norms"),
    (dict(family="qwen3_moe", rope_type="yarn", rope_factor=4.0, rope_original_max_position_embeddings=8,
          rope_attention_factor=1.3), r"YaRN with cos and sin scaled by 1.3 .* qwen3moe scales them by 1.13863"),
    (dict(family="deepseek_v3", rope_type="yarn", rope_factor=4.0, rope_original_max_position_embeddings=8),
     r"YaRN with cos and sin scaled by 1.13863 .* deepseek2 scales them by 1$"),
    # llama.cpp rounds YaRN's correction range: written anyway, logits 1.3-2.0 from r1jax's on tiny models
    (dict(family="qwen3_moe", rope_type="yarn", rope_factor=4.0, rope_original_max_position_embeddings=8,
          rope_truncate=False), r"YaRN with rope truncate=false .* llama.cpp always rounds it"),
])
def test_models_llama_cpp_cannot_run_are_refused_before_loading_weights(change, why, tokenizer, tmp_path, capsys):
    family = change.pop("family")
    save_checkpoint(tmp_path / "ck", dataclasses.replace(CONFIGS[family], **change), tokenizer)
    assert main(["export-gguf", str(tmp_path / "ck"), str(tmp_path / "m.gguf")]) == 2
    err = capsys.readouterr().err
    assert f"this {family} model cannot run in llama.cpp as" in err
    assert re.search(why, err), err
    assert not (tmp_path / "m.gguf").exists()


def test_cli_needs_a_tokenizer(tmp_path, capsys):
    config = dataclasses.replace(load_config(TRAIN_CONFIG), model=CONFIGS["deepseek_v3"])
    save_policy(tmp_path / "ck", config, init_policy(CONFIGS["deepseek_v3"], 0))
    assert main(["export-gguf", str(tmp_path / "ck"), str(tmp_path / "m.gguf")]) == 2
    assert "carries no tokenizer, and llama.cpp needs one in the file: pass --tokenizer" in capsys.readouterr().err
