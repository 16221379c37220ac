"""Hugging Face interop: HF -> r1jax -> HF is bitwise exact; transformers runs our exports like r1jax does.

Each case builds a tiny random HF model with transformers, imports it (sharded on a CPU mesh), exports it
again (forced into several safetensors shards) and checks: identical tensor names and bytes, logits within
1e-4 of r1jax's, and identical 32-token greedy generations. The r1jax tokenizer exported beside them loads
with AutoTokenizer and decodes (and encodes) as r1jax does.
"""

import dataclasses
import json

import gguf
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from safetensors.numpy import save_file

from r1jax.errors import UserError
from r1jax.model.hf_config import from_hf_config, to_hf_config
from r1jax.model.hf_io import export_hf, host_slot
from r1jax.model.hf_tokenizer import save_hf_tokenizer
from r1jax.model.tokenizer import MIN_VOCAB, apply_template, load_tokenizer, train_tokenizer
from r1jax.rl.checkpoint import load_config
from r1jax.rl.cli.export_hf import resolve_tokenizer
from r1jax.rl.cli.main import main
from r1jax.rl.hf_policy import hf_run_config, load_hf_policy
from r1jax.sharding.mesh import ShardingConfig, build_mesh
from r1jax.sharding.rules import Rules
from tests.model.hf_models import random_hf_model, read_safetensors
from tests.model.tiny import DEEPSEEK, QWEN

CASES = {  # together: group-limited routing, shared experts, first_k_dense_replace 0 and 1, q_lora_rank
    # null, tied embeddings, norm_topk_prob false, non-zero e_score_correction_bias, dense Qwen layers, an
    # rms_norm_eps that MLA's kv_a_layernorm does not take (transformers keeps its default 1e-6 there)
    "qwen_sparse_step": dataclasses.replace(QWEN, mlp_only_layers=(), decoder_sparse_step=2),
    "qwen_tied_no_norm_topk_dense_layer": dataclasses.replace(QWEN, tie_word_embeddings=True,
                                                              norm_topk_prob=False, mlp_only_layers=(0,)),
    "deepseek_groups_shared_dense_first": DEEPSEEK,
    "deepseek_no_q_lora_no_dense": dataclasses.replace(DEEPSEEK, q_lora_rank=None, first_k_dense_replace=0,
                                                       n_group=1, topk_group=1, norm_topk_prob=False,
                                                       n_shared_experts=2, rms_norm_eps=1e-2),
}
MESH = ShardingConfig(data=1, fsdp=2, expert=2, tensor=2)
SHARDED = ("qwen_tied_no_norm_topk_dense_layer", "deepseek_groups_shared_dense_first")
torch.set_num_threads(1)  # torch's threads spinning beside XLA's slow both down tenfold on a small machine


def assert_bitwise_equal(ours: dict, theirs: dict) -> None:
    assert sorted(ours) == sorted(theirs)
    differ = [n for n in theirs if ours[n].dtype != theirs[n].dtype or ours[n].shape != theirs[n].shape
              or ours[n].tobytes() != theirs[n].tobytes()]
    assert not differ, f"tensors differ: {differ}"


def greedy(policy, prompt_BT: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Greedy decoding by full forward passes over a fixed padded buffer (one compilation).

    Returns the new tokens and the last pass's logits, which hold every position but the last one of the
    final sequence (causality: later buffer slots do not affect them).
    """
    graphdef, state = nnx.split(policy)
    b, t0 = prompt_BT.shape

    @jax.jit
    def run(state, buf_BT):
        model = nnx.merge(graphdef, state)

        def step(i, carry):
            buf_BT, _ = carry
            logits_BTV = model(buf_BT).logits_BTV
            logits_BV = jax.lax.dynamic_index_in_dim(logits_BTV, t0 + i - 1, 1, keepdims=False)
            next_B1 = jnp.argmax(logits_BV, axis=-1).astype(buf_BT.dtype)[:, None]
            return jax.lax.dynamic_update_slice(buf_BT, next_B1, (0, t0 + i)), logits_BTV

        logits_BTV = jnp.zeros(buf_BT.shape + (policy.cfg.vocab_size,), jnp.float32)
        return jax.lax.fori_loop(0, steps, step, (buf_BT, logits_BTV))

    buf_BT, logits_BTV = run(state, jnp.zeros((b, t0 + steps), jnp.int32).at[:, :t0].set(prompt_BT))
    return np.asarray(buf_BT)[:, t0:], np.asarray(logits_BTV)[:, :-1]


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip_logits_and_greedy_generation(case, tmp_path):
    cfg = CASES[case]
    hf = random_hf_model(cfg, seed=1, bias_scale=0.05)
    source, export = tmp_path / "hf", tmp_path / "export"
    hf.save_pretrained(source, max_shard_size="40KB" if cfg.is_deepseek else "5GB")  # sharded and single
    mesh = build_mesh(MESH) if case in SHARDED else None  # the multi-device gather path or the plain one

    config, policy = load_hf_policy(source, mesh, Rules.preset("fsdp_expert_tensor"))
    arch = {f.name for f in dataclasses.fields(cfg)} - {"moe_block_size"}
    assert {k: getattr(config.model, k) for k in arch} == {k: getattr(cfg, k) for k in arch}
    files = export_hf(policy, export, max_shard_bytes=30_000)
    assert (export / "model.safetensors.index.json") in files
    assert_bitwise_equal(read_safetensors(export), read_safetensors(source))

    theirs = transformers.AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    _, policy = load_hf_policy(export)  # unsharded, from our own export
    prompt = np.random.RandomState(0).randint(0, cfg.vocab_size, (2, 6))
    with torch.no_grad():
        their_tokens = theirs.generate(torch.tensor(prompt), attention_mask=torch.ones(2, 6, dtype=torch.long),
                                       do_sample=False, max_new_tokens=32, eos_token_id=None,
                                       pad_token_id=None)
        their_logits = theirs(their_tokens).logits.numpy()[:, :-1]
    assert their_tokens.shape == (2, 6 + 32)
    our_tokens, our_logits = greedy(policy, prompt, 32)
    np.testing.assert_array_equal(our_tokens, their_tokens[:, 6:].numpy())
    np.testing.assert_allclose(our_logits, their_logits, atol=1e-4, rtol=0)


def test_bfloat16_checkpoint_round_trips_bitwise(tmp_path):
    random_hf_model(DEEPSEEK, seed=2, bias_scale=0.05).save_pretrained(tmp_path / "f32")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "f32", dtype=torch.bfloat16)
    hf.save_pretrained(tmp_path / "hf")  # the hub layout: bfloat16 weights, float32 router (weight and bias)
    assert hf_run_config(tmp_path / "hf")[0].model.param_dtype == "bfloat16"  # as stored, unless told:
    config, policy = load_hf_policy(tmp_path / "hf", overrides=["model.param_dtype=float32"])
    assert config.model.param_dtype == "float32"  # widened exactly (the float32 router too); float32 masters
    export_hf(policy, tmp_path / "out", dtype="bfloat16")
    source, ours = read_safetensors(tmp_path / "hf"), read_safetensors(tmp_path / "out")
    assert ours["model.layers.1.mlp.gate.e_score_correction_bias"].dtype == np.float32  # as HF keeps it
    assert ours["model.layers.1.mlp.gate.weight"].dtype == np.float32
    assert ours["model.layers.1.mlp.experts.0.gate_proj.weight"].dtype == ml_dtypes.bfloat16
    assert ours["model.embed_tokens.weight"].dtype == ml_dtypes.bfloat16
    assert_bitwise_equal(ours, source)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"


@pytest.mark.parametrize("case", ["qwen_tied_no_norm_topk_dense_layer", "deepseek_no_q_lora_no_dense"])
def test_config_json_round_trips_and_loads_in_transformers(case, tmp_path):
    cfg = CASES[case]
    hf_json = to_hf_config(cfg, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    back, notes = from_hf_config(json.loads(json.dumps(hf_json)))
    assert back == dataclasses.replace(cfg, moe_block_size=back.moe_block_size) and not notes
    (tmp_path / "config.json").write_text(json.dumps(hf_json))
    theirs = transformers.AutoConfig.from_pretrained(tmp_path)
    assert type(theirs).__name__ == ("DeepseekV3Config" if cfg.is_deepseek else "Qwen3MoeConfig")
    assert (theirs.num_local_experts, theirs.tie_word_embeddings, theirs.norm_topk_prob) == (
        cfg.n_routed_experts, cfg.tie_word_embeddings, cfg.norm_topk_prob)
    assert theirs.rope_parameters == {"rope_type": "default", "rope_theta": cfg.rope_theta}
    assert (theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id) == (1, 2, 3)
    if cfg.is_deepseek:
        assert theirs.q_lora_rank is None and theirs.num_nextn_predict_layers == 0


def test_hub_configs_take_transformers_defaults_and_legacy_keys():
    hub = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 64,
           "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2, "num_experts": 8,
           "num_experts_per_tok": 2, "rope_theta": 1e6, "rope_scaling": None, "use_sliding_window": False,
           "sliding_window": 4096}
    cfg, _ = from_hf_config(hub)
    assert (cfg.head_dim, cfg.rope_theta, cfg.norm_topk_prob, cfg.vocab_size) == (16, 1e6, False, 151936)
    deepseek = {**to_hf_config(DEEPSEEK), "num_nextn_predict_layers": 1, "rope_parameters": None,
                "rope_theta": 5e4}
    cfg, notes = from_hf_config(deepseek)
    assert cfg.rope_theta == 5e4 and "num_nextn_predict_layers=1" in notes[0]


@pytest.mark.parametrize("change,named", [
    ({"rope_scaling": {"type": "dynamic", "factor": 40}}, "dynamic"),
    ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4, "factor": 4}}, "longrope"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": "4"}}, "rope_parameters.factor"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4}}, "rope_original_max_position"),
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"attention_dropout": 0.1}, "attention_dropout"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"quantization_config": {"quant_method": "fp8"}}, "fp8"),
    ({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}, "LlamaForCausalLM"),
])
def test_unsupported_settings_are_named(change, named):
    with pytest.raises(UserError, match=named):
        from_hf_config({**to_hf_config(QWEN), **change})


def test_all_unsupported_deepseek_settings_are_listed_together():
    bad = {**to_hf_config(DEEPSEEK), "scoring_func": "softmax", "topk_method": "greedy", "num_key_value_heads": 1,
           "hidden_act": "relu"}
    with pytest.raises(UserError) as err:
        from_hf_config(bad)
    for key in ("scoring_func", "topk_method", "num_key_value_heads", "hidden_act"):
        assert key in str(err.value)


def test_missing_unexpected_and_misshaped_tensors_are_listed(tmp_path):
    hf = random_hf_model(QWEN, seed=3)
    hf.save_pretrained(tmp_path)
    weights = read_safetensors(tmp_path)
    del weights["model.layers.0.mlp.experts.3.up_proj.weight"]
    weights["model.layers.0.mlp.router.weight"] = np.zeros((8, 32), np.float32)
    weights["model.norm.weight"] = np.zeros((33,), np.float32)
    (tmp_path / "model.safetensors").unlink()
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(UserError) as err:
        load_hf_policy(tmp_path)
    message = str(err.value)
    assert "missing tensors (1): model.layers.0.mlp.experts.3.up_proj.weight" in message
    assert "unexpected tensors (1): model.layers.0.mlp.router.weight" in message
    assert "model.norm.weight [33] (expected [32])" in message


def test_stray_safetensors_files_are_left_or_named(tmp_path):
    """Without an index, model.safetensors is the checkpoint, as transformers loads it (a stray adapter file
    beside it is left alone); without either, every *.safetensors file is read, and a tensor found in two of
    them is an error naming both files (one copy was taken, silently)."""
    hf = random_hf_model(QWEN, seed=3)
    hf.save_pretrained(tmp_path)
    weights = read_safetensors(tmp_path)
    save_file({"base_model.lora_A.weight": np.zeros((2, 2), np.float32)}, str(tmp_path / "adapter_model.safetensors"))
    config, _ = load_hf_policy(tmp_path)  # the adapter's tensor is not read: no "unexpected tensors" error
    assert config.model.num_hidden_layers == QWEN.num_hidden_layers
    (tmp_path / "model.safetensors").rename(tmp_path / "a.safetensors")
    save_file({"model.norm.weight": weights["model.norm.weight"]}, str(tmp_path / "b.safetensors"))
    with pytest.raises(UserError, match="tensor 'model.norm.weight' is in both a.safetensors and b.safetensors"):
        load_hf_policy(tmp_path)


def test_deepseek_without_shared_experts_imports_and_matches_transformers(tmp_path):
    """transformers builds DeepSeek-V3's shared experts zero wide when there are none and saves them empty:
    those empty tensors are no "unexpected tensors" (the import refused the checkpoint)."""
    cfg = dataclasses.replace(DEEPSEEK, n_shared_experts=0)
    hf = random_hf_model(cfg, seed=6)
    hf.save_pretrained(tmp_path)
    assert any(".shared_experts." in name for name in read_safetensors(tmp_path))
    config, policy = load_hf_policy(tmp_path)
    assert config.model.n_shared_experts == 0
    tokens = np.random.RandomState(1).randint(0, cfg.vocab_size, (2, 8))
    with torch.no_grad():
        theirs = hf.float()(torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(np.asarray(policy(jnp.asarray(tokens)).logits_BTV), theirs, atol=1e-4, rtol=0)


def test_multi_token_prediction_layers_are_skipped(tmp_path):
    hf = random_hf_model(DEEPSEEK, seed=4)
    hf.save_pretrained(tmp_path / "hf")
    weights = read_safetensors(tmp_path / "hf")
    weights["model.layers.3.eh_proj.weight"] = np.ones((32, 64), np.float32)  # layer 3 = the MTP module
    save_file(weights, str(tmp_path / "hf" / "model.safetensors"))
    config, _ = load_hf_policy(tmp_path / "hf")
    assert config.model.num_hidden_layers == 3


def test_gather_is_bitwise_for_any_sharding_and_signed_zeros():
    mesh = build_mesh(ShardingConfig(data=2, fsdp=2, expert=2, tensor=1))
    x = np.random.RandomState(0).randn(4, 8, 8).astype(np.float32)
    x[1, 2, :3] = -0.0
    for spec in [P(("data", "fsdp"), None, "expert"), P("expert", ("data", "fsdp")), P(None, None, "data")]:
        arr = jax.device_put(x, NamedSharding(mesh, spec))
        for index in [(1,), (3, 5), (1, 2), ()]:
            got = host_slot(arr, index, "float32")
            assert got.tobytes() == x[index].tobytes(), (spec, index)
        assert host_slot(arr, (1, 2), "bfloat16").tobytes() == x[1, 2].astype(ml_dtypes.bfloat16).tobytes()


TEXTS = ["What is 12 + 35? <think> 12 + 35 = 47 </think> <answer>47</answer>", "  two  spaces\nnew line \t tab ",
         "unicode ✓ 日本語 😀 and a literal \u2581 meta", "\U000f0000 private use"]


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def tokenizer(request):
    corpus = ["What is 12 + 35? <think> 12 + 35 = 47 </think> <answer>47</answer>",
              "The quick brown fox jumps over the lazy dog.", "Solve x^2 - 4 = 0 for x, then check."] * 30
    return train_tokenizer(corpus, 320, model_type=request.param)


def test_tokenizer_round_trip_through_auto_tokenizer(tokenizer, tmp_path):
    save_hf_tokenizer(tokenizer, tmp_path, template="r1_zero")
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert theirs.decode(ids) == tokenizer.decode(ids) == text
        assert theirs.encode(text, add_special_tokens=False) == ids  # encoding agrees too
    ids = [tokenizer.bos_id, *tokenizer.encode("hi <think>"), tokenizer.eos_id, tokenizer.pad_id]
    assert theirs.decode(ids, skip_special_tokens=True) == tokenizer.decode(ids) == "hi <think>"
    assert (theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id, theirs.unk_token_id) == (1, 2, 3, 0)
    prompt = "Compute {3} + 4"
    chat = theirs.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    assert chat == "<s>" + apply_template("r1_zero", prompt)  # bos first, as r1jax prompts the policy
    assert theirs(prompt)["input_ids"] == tokenizer.encode(prompt, add_bos=True)
    # llama.cpp's converter lets tokenizer_config.json's add_bos_token override the post-processor: bos too
    special = gguf.SpecialVocab(tmp_path, load_merges=False)
    assert (special.special_token_ids["bos"], special.special_token_ids["eos"]) == (1, 2)
    assert (special.add_special_token.get("bos"), special.add_special_token.get("eos")) == (True, False)


def test_cli_import_then_export(tmp_path, capsys):
    cfg = dataclasses.replace(CASES["qwen_tied_no_norm_topk_dense_layer"], vocab_size=MIN_VOCAB)
    hf = random_hf_model(cfg, seed=5)
    hf.save_pretrained(tmp_path / "hf")
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "ck"), "sharding.expert=2"]) == 0
    assert load_config(tmp_path / "ck").sharding.expert == 2
    train_tokenizer(["plain text for a tiny tokenizer"] * 20, MIN_VOCAB).save(tmp_path / "tok")
    assert main(["export-hf", str(tmp_path / "ck"), str(tmp_path / "out"), "--dtype", "float32",
                 "--tokenizer", str(tmp_path / "tok"), "--template", "chat"]) == 0
    assert_bitwise_equal(read_safetensors(tmp_path / "out"), read_safetensors(tmp_path / "hf"))
    assert transformers.AutoConfig.from_pretrained(tmp_path / "out").eos_token_id == 2
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    chat = theirs.apply_chat_template([{"role": "user", "content": "1+1"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<s>User: 1+1\nAssistant:"
    assert main(["export-hf", str(tmp_path / "ck"), str(tmp_path / "out")]) == 2  # not empty
    assert main(["export-hf", str(tmp_path / "ck"), str(tmp_path / "o2"), "model.vocab_size=3"]) == 2
    train_tokenizer(["more text, and some other text"] * 20, MIN_VOCAB + 40).save(tmp_path / "big")
    assert main(["export-hf", str(tmp_path / "ck"), str(tmp_path / "o3"), "--tokenizer", str(tmp_path / "big")]) == 2
    assert "do not fit the model's vocab_size" in capsys.readouterr().err
    big = load_tokenizer(tmp_path / "big")  # one that exactly fills the vocabulary fits
    assert resolve_tokenizer(str(tmp_path / "big"), big.vocab_size, str(tmp_path / "ck")) == big
    fits_not = f"{big.vocab_size} pieces do not fit the model's vocab_size {big.vocab_size - 1}"
    with pytest.raises(UserError, match=fits_not):
        resolve_tokenizer(str(tmp_path / "big"), big.vocab_size - 1, str(tmp_path / "ck"))
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu"}))
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "ck2")]) == 2
    assert "hidden_act='gelu'" in capsys.readouterr().err
