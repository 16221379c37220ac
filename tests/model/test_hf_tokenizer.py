"""read_model_proto (the proto read through sentencepiece's own message classes) agrees with sentencepiece; the
converted BPE merges encode as sentencepiece does; the written config and chat template's opening."""

import pytest
import sentencepiece as spm

from r1jax.model.hf_tokenizer import read_model_proto
from r1jax.model.tokenizer import MIN_VOCAB, train_tokenizer

CORPUS = ["What is 12 + 35? <think> 12 + 35 = 47 </think> <answer>47</answer>",
          "The quick brown fox jumps over the lazy dog.", "日本語のテキスト ✓✗★☆ много символов"] * 30


@pytest.mark.parametrize("model_type,vocab_size", [("bpe", 320), ("unigram", 320), ("bpe", MIN_VOCAB)])
def test_pieces_scores_and_kinds_are_sentencepieces_own(model_type, vocab_size):
    tok = train_tokenizer(CORPUS, vocab_size, model_type=model_type)
    sp = spm.SentencePieceProcessor(model_proto=tok.model_proto)
    got_type, pieces = read_model_proto(tok.model_proto)
    assert got_type == model_type
    assert len(pieces) == sp.get_piece_size()
    kinds = {"unknown": sp.is_unknown, "control": sp.is_control, "byte": sp.is_byte, "unused": sp.is_unused}
    for i, (piece, score, kind) in enumerate(pieces):
        assert (piece, score) == (sp.id_to_piece(i), sp.get_score(i)), i
        assert {name for name, test in kinds.items() if test(i)} == ({kind} & kinds.keys()), (i, kind)
    user_defined = [piece for piece, _, kind in pieces if kind == "user_defined"]
    assert user_defined == ["<think>", "</think>", "<answer>", "</answer>"]  # the R1 tags, ids 4..7
    assert sum(kind == "byte" for _, _, kind in pieces) == 256
    assert {kind for _, _, kind in pieces} == {"unknown", "control", "user_defined", "byte", "normal"}


def test_the_bpe_merges_encode_as_sentencepiece_does():
    import json

    from tokenizers import Tokenizer as RustTokenizer

    from r1jax.model.hf_tokenizer import tokenizer_json

    corpus = CORPUS + ["Solve x^2 - 4 = 0 for x, then check the answer twice.",
                       "Numbers 1234567890 and words: tokenizer, tokenization, tokens."] * 30
    tok = train_tokenizer(corpus, 600, model_type="bpe")
    theirs = RustTokenizer.from_str(json.dumps(tokenizer_json(tok.model_proto)))
    texts = ["The quick brown fox jumps over the lazy dog.", "tokenization of 1234567890 numbers, twice",
             "Solve x^2 - 4 = 0", "unseen words: zebra quixotic"]
    for text in texts:
        assert theirs.encode(text, add_special_tokens=False).ids == tok.encode(text), text


def test_the_written_config_keeps_the_length_and_the_chat_template_opens_with_the_given_start(tmp_path):
    import json

    from r1jax.model.chat_template import ChatTemplate
    from r1jax.model.hf_tokenizer import chat_template, save_hf_tokenizer
    from r1jax.model.tokenizer import apply_template

    tok = train_tokenizer(CORPUS, 320)
    save_hf_tokenizer(tok, tmp_path / "a", model_max_length=4096)
    save_hf_tokenizer(tok, tmp_path / "b")
    assert json.loads((tmp_path / "a" / "tokenizer_config.json").read_text())["model_max_length"] == 4096
    assert "model_max_length" not in json.loads((tmp_path / "b" / "tokenizer_config.json").read_text())
    user = [{"role": "user", "content": "1+1"}]
    named = {"bos_token": "<s>", "eos_token": "</s>"}
    for start, first in ((None, "<s>"), ("", ""), ("<|begin|>", "<|begin|>")):
        text = ChatTemplate(chat_template("r1_zero", start), "test", named).render(user, add_generation_prompt=True)
        assert text == first + apply_template("r1_zero", "1+1")


def test_the_export_ships_the_sentencepiece_model_which_only_the_gguf_export_reads(tmp_path):
    """save_hf_tokenizer writes tokenizer.model beside tokenizer.json (as Llama-style repositories do); transformers
    and r1jax still tokenize with tokenizer.json, whose ids are those of the same files without it; `written_from`
    knows the file as the model's conversion, also after transformers saved it again, and not once edited."""
    import json
    import shutil

    import transformers

    from r1jax.model.hf_tokenizer import save_hf_tokenizer, written_from
    from r1jax.model.tokenizer import load_tokenizer
    from r1jax.model.tokenizer_json import HFTokenizer
    from tests.model.hf_tokenizer_files import write_hf_tokenizer

    tok = train_tokenizer(CORPUS, 320)
    save_hf_tokenizer(tok, tmp_path / "both")
    assert (tmp_path / "both" / "tokenizer.model").read_bytes() == tok.model_proto
    shutil.copytree(tmp_path / "both", tmp_path / "json")
    (tmp_path / "json" / "tokenizer.model").unlink()
    both, json_only = load_tokenizer(tmp_path / "both"), load_tokenizer(tmp_path / "json")
    assert isinstance(both, HFTokenizer) and both == json_only and "tokenizer.model" in both.files
    theirs = [transformers.AutoTokenizer.from_pretrained(tmp_path / name) for name in ("both", "json")]
    for text in CORPUS[:3] + ["0123 ✓ <answer>", ""]:  # (not "<s>": a known gap, model.hf_tokenizer)
        ids = [t(text)["input_ids"] for t in theirs]
        assert ids[0] == ids[1] == both.encode(text, add_bos=True) == tok.encode(text, add_bos=True), text
    both.save(tmp_path / "copy")  # what import-hf and the trainer write: the model travels along
    assert (tmp_path / "copy" / "tokenizer.model").read_bytes() == tok.model_proto
    text = (tmp_path / "both" / "tokenizer.json").read_text()
    theirs[0].save_pretrained(tmp_path / "resaved")
    assert written_from(tok.model_proto, text)
    assert written_from(tok.model_proto, (tmp_path / "resaved" / "tokenizer.json").read_text())
    edited = json.loads(text)
    edited["added_tokens"].append({**edited["added_tokens"][-1], "id": 320, "content": "<tool>"})
    assert not written_from(tok.model_proto, json.dumps(edited))
    assert not written_from(tok.model_proto, (write_hf_tokenizer(tmp_path / "qwen", "qwen") / "tokenizer.json")
                            .read_text())
    assert not written_from(b"not a model", text)
    # a stray r1jax model beside another tokenizer.json: that tokenizer.json is still the tokenizer
    tok.save(tmp_path / "qwen")
    assert load_tokenizer(tmp_path / "qwen") == HFTokenizer.load(write_hf_tokenizer(tmp_path / "q2", "qwen"))
