"""read_model_proto (the proto read through sentencepiece's own message classes) agrees with sentencepiece."""

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
