"""Exported GGUF files run in llama.cpp itself (the `llama-cpp-python` bindings of the test extra) and give
r1jax's outputs: for small random DeepSeek-V3 and Qwen3-MoE policies, greedy generation equals r1jax's sampler
at temperature 0 (what `r1jax generate --temperature 0` runs) token for token, the logits of every prompt position agree with r1jax's
forward pass within LOGIT_TOL, and the log-probabilities of the generated tokens with r1jax's within
LOGPROB_TOL (f32 export, f32 KV cache in llama.cpp). llama.cpp also tokenizes text as r1jax does, with the
tokenizer the file carries (sentencepiece as llama.cpp's SPM, a Qwen-style tokenizer.json as its qwen2 BPE), also
for a checkpoint moved through Hugging Face files (export-hf, then import-hf) with no run directory left.
"""

import dataclasses
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1jax.model.hf_tokenizer import chat_template
from r1jax.model.tokenizer import HFTokenizer, train_tokenizer
from r1jax.model.factory import init_policy
from r1jax.rl.checkpoint import find_tokenizer
from r1jax.rl.cli.main import main
from r1jax.rl.gguf_export import export_gguf
from r1jax.rl.sampler import Sampler, SamplingConfig
from tests.model.hf_tokenizer_files import write_hf_tokenizer
from tests.model.tiny import DEEPSEEK, QWEN
from tests.rl.test_export_gguf import CORPUS, read, save_checkpoint

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (the test extra) is not installed")

GGML_TYPE_F32 = 0
# measured on x86-64 CPUs: max |difference| 2.6e-6 in logits, 1.7e-6 in log-probs (logits of magnitude ~1-10)
LOGIT_TOL = 2e-5
LOGPROB_TOL = 2e-5
NEW_TOKENS = 8
PROMPT = [1, 30, 41, 52, 63, 74, 85, 96, 107, 118, 129]  # bos, then ordinary pieces
# a spread of logits well above the numeric difference, so greedy choices are not near-ties
SCALE = dict(initializer_range=0.2)
YARN = dict(rope_type="yarn", max_position_embeddings=64)
CONFIGS = {"deepseek_v3": dataclasses.replace(DEEPSEEK, **SCALE),
           # HF's non-interleaved rope: the export permutes the rope rows into llama.cpp's adjacent pairs
           "deepseek_v3_rope_halves": dataclasses.replace(DEEPSEEK, rope_interleave=False, **SCALE),
           "qwen3_moe": dataclasses.replace(QWEN, mlp_only_layers=(), **SCALE),
           # tied embeddings: no output.weight in the file; llama.cpp reads the token embeddings for both
           "deepseek_v3_tied": dataclasses.replace(DEEPSEEK, tie_word_embeddings=True, **SCALE),
           "qwen3_moe_tied": dataclasses.replace(QWEN, mlp_only_layers=(), tie_word_embeddings=True, **SCALE),
           # YaRN over an original context of 2-4 positions: the prompt and completion run past it (llama.cpp
           # reads the betas; the default rotary embedding's logits differ by 2-3.5 from these)
           "deepseek_v3_yarn": dataclasses.replace(DEEPSEEK, **YARN, rope_factor=8.0,
                                                   rope_original_max_position_embeddings=2, rope_mscale=1.0,
                                                   rope_mscale_all_dim=1.0, **SCALE),
           "qwen3_moe_yarn": dataclasses.replace(QWEN, mlp_only_layers=(), **YARN, rope_factor=4.0,
                                                 rope_original_max_position_embeddings=4, rope_beta_fast=16.0,
                                                 rope_beta_slow=2.0, **SCALE)}


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, 300)


def load(path, **options):
    # one thread: ggml's worker threads spin-wait for each other, which stalls on a busy shared CI runner
    return llama_cpp.Llama(model_path=str(path), n_ctx=64, n_batch=64, logits_all=True, verbose=False,
                           n_threads=1, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, **options)


def llama_greedy(llm, prompt: list[int], steps: int) -> tuple[np.ndarray, list[int], list[float]]:
    """(prompt logits [T, V], greedy ids, their log-probs) from llama.cpp's forward pass alone."""
    llm.reset()
    llm.eval(prompt)
    prompt_logits = np.array(llm.scores[:len(prompt)], np.float64)
    ids, logprobs = [], []
    for _ in range(steps):
        logits = np.array(llm.scores[llm.n_tokens - 1], np.float64)
        token = int(np.argmax(logits))
        ids.append(token)
        logprobs.append(float(logits[token] - np.logaddexp.reduce(logits)))
        llm.eval([token])
    return prompt_logits, ids, logprobs


def r1jax_greedy(policy, tok, prompt: list[int]) -> tuple[list[int], list[float]]:
    """(ids, log-probs) of r1jax's sampler at temperature 0, as `r1jax generate --temperature 0` runs it."""
    graphdef, state = nnx.split(policy)
    sampler = Sampler(graphdef, SamplingConfig(max_new_tokens=NEW_TOKENS, temperature=0.0, prompt_buckets=(16,)),
                      tok.eos_ids, tok.pad_id, vocab_size=tok.vocab_size)
    rollout = sampler.generate(state, [prompt], ignore_eos=True)
    return np.asarray(rollout.completion_BN)[0].tolist(), np.asarray(rollout.logprobs_BN, np.float64)[0].tolist()


@pytest.mark.parametrize("case", list(CONFIGS))
def test_llama_cpp_generates_what_r1jax_generates(case, tokenizer, tmp_path):
    cfg = dataclasses.replace(CONFIGS[case], vocab_size=tokenizer.vocab_size)  # no padded ids to mask
    policy = init_policy(cfg, 3)
    export_gguf(policy, tmp_path / "m.gguf", tokenizer, "f32")
    our_ids, our_logprobs = r1jax_greedy(policy, tokenizer, PROMPT)
    prompt_logits, ids, logprobs = llama_greedy(load(tmp_path / "m.gguf"), PROMPT, NEW_TOKENS)
    reference = np.asarray(policy(jnp.asarray([PROMPT])).logits_BTV[0], np.float64)
    top2 = np.sort(reference[-1])[-2:]
    print(f"{case}: max |logit diff| {np.abs(prompt_logits - reference).max():.2e}, max |logprob diff| "
          f"{np.abs(np.array(logprobs) - our_logprobs).max():.2e}, top-2 margin {top2[1] - top2[0]:.3f}")
    assert ids == our_ids
    np.testing.assert_allclose(prompt_logits, reference, rtol=0, atol=LOGIT_TOL)
    np.testing.assert_allclose(logprobs, our_logprobs, rtol=0, atol=LOGPROB_TOL)


TEXTS = ["What is 12 + 35?", "The quick brown fox <think> jumps </think> over", "x^2 - 4 = 0 <answer>2</answer>",
         "数学の問題 — ответ: 42\n  two  spaces"]


def test_llama_cpp_tokenizes_as_r1jax(tokenizer, tmp_path):
    """The file's tokenizer in llama.cpp: r1jax's sentencepiece (SPM) and tokenizer.json files of both styles
    (byte-level BPE with Qwen's split regexes; the DeepSeek style's post-processor adds bos)."""
    cases = [("sp", tokenizer, 320)]
    for style in ("qwen", "deepseek"):
        cases.append((style, HFTokenizer.load(write_hf_tokenizer(tmp_path / style, style)), 640))
    for name, tok, vocab in cases:
        path = tmp_path / f"{name}.gguf"
        export_gguf(init_policy(dataclasses.replace(QWEN, vocab_size=vocab, mlp_only_layers=()), 0), path, tok, "f32")
        llm = load(path, vocab_only=True)
        for text in TEXTS:
            theirs = llm.tokenize(text.encode(), add_bos=True, special=False)
            assert theirs == tok.encode(text, add_bos=True), (name, text)
            assert llm.detokenize(theirs).decode() == text, (name, text)


def test_a_checkpoint_moved_through_hugging_face_files_exports_with_its_tokenizer(tokenizer, tmp_path, capsys):
    """train -> export-hf -> import-hf -> export-gguf, the run directory gone (a model fetched from the hub):
    export-gguf refused the imported tokenizer.json ("a BPE model without a ByteLevel pre-tokenizer"). export-hf
    now writes the sentencepiece tokenizer.model beside it, import-hf carries it, and the file holds it as
    llama.cpp's SPM tokenizer: llama.cpp tokenizes as r1jax does and computes r1jax's logits."""
    cfg = dataclasses.replace(CONFIGS["qwen3_moe"], vocab_size=320)
    policy = save_checkpoint(tmp_path / "run", cfg, tokenizer, template="r1_zero")
    assert main(["export-hf", str(tmp_path / "run"), str(tmp_path / "hf"), "--dtype", "float32"]) == 0
    shutil.rmtree(tmp_path / "run")
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "ck")]) == 0
    imported = find_tokenizer(tmp_path / "ck")
    assert isinstance(imported, HFTokenizer)  # r1jax reads the tokenizer.json, as before
    assert main(["export-gguf", str(tmp_path / "ck"), str(tmp_path / "m.gguf")]) == 0, capsys.readouterr().err
    fields = read(tmp_path / "m.gguf")[0]
    assert fields["tokenizer.ggml.model"] == "llama"
    assert fields["tokenizer.chat_template"] == chat_template("r1_zero")  # the export's, which r1jax renders
    llm = load(tmp_path / "m.gguf")
    for text in TEXTS + ["<answer>12</answer>", "0123456789 ÿ é 🙂"]:
        theirs = llm.tokenize(text.encode(), add_bos=True, special=False)
        assert theirs == imported.encode(text, add_bos=True) == tokenizer.encode(text, add_bos=True), text
        assert llm.detokenize(theirs).decode() == text
    prompt = tokenizer.encode("What is 12 + 35? <think>", add_bos=True)
    prompt_logits = llama_greedy(llm, prompt, 1)[0]
    reference = np.asarray(policy(jnp.asarray([prompt])).logits_BTV[0], np.float64)
    np.testing.assert_allclose(prompt_logits, reference, rtol=0, atol=LOGIT_TOL)
