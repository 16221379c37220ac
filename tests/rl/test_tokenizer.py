"""The sentencepiece tokenizer: identity round trip, special pieces, small vocabularies, save/load, CLI."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r1jax.errors import UserError
from r1jax.model.tokenizer import (MIN_VOCAB, R1_ZERO_TEMPLATE, TAGS, Tokenizer, TokenizerConfig, apply_template,
                             train_tokenizer)
from r1jax.rl.cli.main import main
from r1jax.rl.data import DataConfig, build_tokenizer, task_corpus


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(task_corpus(["arithmetic", "countdown", "algebra"], problems_per_level=60), 512)


@pytest.fixture(scope="module")
def tiny():
    """A vocabulary barely above the byte pieces, trained on text with far more characters than fit."""
    corpus = ["日本語のテキストと中文文本", "много разных символов ✓✗★☆", "plain English words"] * 30
    return train_tokenizer(corpus, MIN_VOCAB)


def test_special_tokens_have_fixed_ids_and_tags_are_single_pieces(tokenizer):
    assert (tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (0, 1, 2, 3)
    tag_ids = [4, 5, 6, 7]
    ids = tokenizer.encode("<think> 3+4=7 </think><answer>7</answer>")
    assert [i for i in ids if i in tag_ids] == tag_ids
    for tag, tag_id in zip(TAGS, tag_ids):
        assert tokenizer.encode(tag) == [tag_id] and tokenizer.id_to_piece(tag_id) == tag
    # Control tokens come only from add_bos/add_eos, never from text; decode drops them.
    assert tokenizer.encode("x", add_bos=True, add_eos=True) == [1, *tokenizer.encode("x"), 2]
    assert not {1, 2, 3} & set(tokenizer.encode("<s> </s> <pad> <unk>"))
    assert tokenizer.decode([1, *tokenizer.encode("hi"), 2, 3, 3]) == "hi"


def test_digits_are_split_and_the_vocabulary_is_learned_up_to_the_request(tokenizer):
    assert tokenizer.vocab_size == 512
    pieces = [tokenizer.id_to_piece(i) for i in tokenizer.encode("12345")]
    assert pieces == list("12345")  # one token per digit: arithmetic stays learnable
    assert len(tokenizer.encode("Compute 37*4-12")) < len("Compute 37*4-12")


ROUND_TRIP = ["", " ", "  two  spaces\t\n\r\n", "\u2581 literal meta \u2581\u2581",
              "\U000f0000_ escape \U000f0000", "<think>x</think>", "<s></s><pad><unk>", "e\u0301 é ﬁ ½ ２",
              "日本語 🎉 \x00 \u200b", "\\boxed{1/2}"]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip_on_tricky_text(tokenizer, tiny, text):
    for tok in (tokenizer, tiny):
        assert tok.decode(tok.encode(text, add_bos=True)) == text


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=60)
       | st.text(alphabet=st.sampled_from("\u2581\U000f0000_ a<>/thinkanswer\n"), max_size=30))
def test_encode_decode_is_the_identity_on_any_unicode_text(tokenizer, tiny, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tiny.decode(tiny.encode(text)) == text


def test_small_vocabularies_train_and_too_small_ones_fail_clearly(tiny):
    assert tiny.vocab_size <= MIN_VOCAB
    assert train_tokenizer(["a b c"] * 10, 300).vocab_size <= 300  # a small corpus learns fewer pieces
    with pytest.raises(UserError, match=f"tokenizer.vocab_size = 256: must be >= {MIN_VOCAB}"):
        train_tokenizer(["abc"], 256)
    with pytest.raises(UserError, match="corpus is empty"):
        train_tokenizer(["", "  "], 300)


def test_an_empty_corpus_file_is_named(tmp_path):
    """"tokenizer corpus is empty" named no file."""
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(UserError, match=f"tokenizer corpus '{tmp_path / 'empty.txt'}' is empty"):
        train_tokenizer(tmp_path / "empty.txt", 300)


def test_training_is_deterministic_and_save_load_round_trips(tokenizer, tmp_path):
    again = train_tokenizer(task_corpus(["arithmetic", "countdown", "algebra"], problems_per_level=60), 512)
    assert again == tokenizer
    path = tokenizer.save(tmp_path / "ck" / "tokenizer")
    assert path.name == "tokenizer.model"
    loaded = Tokenizer.load(tmp_path / "ck" / "tokenizer")
    text = "Make 16 from 2, 3, 5"
    assert loaded == tokenizer and loaded.encode(text) == tokenizer.encode(text)
    with pytest.raises(UserError, match="does not exist"):
        Tokenizer.load(tmp_path / "nowhere")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "tokenizer.model").write_bytes(b"not a model")
    with pytest.raises(UserError, match="not a sentencepiece model"):
        Tokenizer.load(tmp_path / "junk")


def test_an_empty_tokenizer_file_is_named_as_empty_without_sentencepiece_logs(tmp_path, capfd):
    """0 bytes (a copy cut short, a disk that filled) parse as a model with no pieces: it was "a sentencepiece model
    but not an r1jax tokenizer (it lacks ['<think>', ...])", after eight lines of sentencepiece's C++ log."""
    (tmp_path / "tokenizer.model").write_bytes(b"")
    with pytest.raises(UserError) as refused:
        Tokenizer.load(tmp_path)
    assert str(refused.value).startswith(f"tokenizer file {str(tmp_path / 'tokenizer.model')!r} is an empty file "
                                         "(0 bytes), not a sentencepiece model; train one")
    assert "not initialized" not in capfd.readouterr().err


def test_templates():
    assert apply_template("r1_zero", "Compute 3+4") == R1_ZERO_TEMPLATE.replace("{prompt}", "Compute 3+4")
    assert apply_template("r1_zero", "Compute 3+4").startswith("A conversation between User and Assistant.")
    assert apply_template("r1_zero", "Compute 3+4").endswith("User: Compute 3+4. Assistant:")
    assert apply_template("chat", "Solve {x}") == "User: Solve {x}\nAssistant:"
    with pytest.raises(UserError, match="unknown template"):
        apply_template("alpaca", "q")
    with pytest.raises(UserError, match="tokenizer.template"):
        TokenizerConfig(template="alpaca")
    with pytest.raises(UserError, match="tokenizer.model_type"):
        TokenizerConfig(model_type="wordpiece")


def test_cli_trains_from_tasks_or_a_text_file(tmp_path, capsys):
    assert main(["tokenizer", "train", "--input", "arithmetic,countdown", "--vocab-size", "300",
                 "--problems-per-level", "20", "--out", str(tmp_path / "a")]) == 0
    assert '"vocab_size": 300' in capsys.readouterr().out
    assert Tokenizer.load(tmp_path / "a").encode("<answer>") == [6]
    (tmp_path / "corpus.txt").write_text("the quick brown fox\njumps over the lazy dog\n" * 20)
    assert main(["tokenizer", "train", "--input", str(tmp_path / "corpus.txt"), "--vocab-size", "320",
                 "--out", str(tmp_path / "b"), "--model-type", "unigram"]) == 0
    tok = Tokenizer.load(tmp_path / "b")
    assert tok.decode(tok.encode("the lazy fox")) == "the lazy fox"
    assert main(["tokenizer", "train", "--input", "chess", "--out", str(tmp_path / "c")]) == 2
    assert "not a file and not task names" in capsys.readouterr().err


def test_a_run_loads_its_tokenizer_or_trains_one_on_its_data(tokenizer, tmp_path):
    tokenizer.save(tmp_path / "saved")
    assert build_tokenizer(TokenizerConfig(path=str(tmp_path / "saved")), DataConfig()) == tokenizer
    (tmp_path / "d.jsonl").write_text('{"prompt": "Wie viel ist zwei plus zwei", "answer": "vier"}\n' * 20)
    trained = build_tokenizer(TokenizerConfig(vocab_size=300), DataConfig(path=str(tmp_path / "d.jsonl")))
    assert trained.vocab_size <= 300 and len(trained.encode("zwei plus zwei")) < len("zwei plus zwei")


def _latin1_text(path):
    path.write_bytes("".join(f"line {i} of plain words\n" for i in range(5)).encode() + "café\n".encode("latin-1")
                     + b"more words\n" * 20)


def _surrogate_row(path):
    path.write_text('{"prompt": "plain words", "answer": "1"}\n' * 12 + '{"prompt": "ok", "answer": "a \\udfff"}\n')


def _latin1_row(path):
    path.write_bytes(b'{"prompt": "plain words", "answer": "1"}\n' * 3 + '{"prompt": "café"}\n'.encode("latin-1"))


def _latin1_parquet(path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = pa.array([b"1", b"caf\xe9 au lait", b"2"], pa.binary())  # pyarrow itself refuses such a string column
    answers = pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())
    pq.write_table(pa.table({"prompt": ["a", "b", "c"], "answer": answers}), path)


@pytest.mark.parametrize("name, write, message", [
    ("corpus.txt", _latin1_text, "line 6: not UTF-8 text (invalid continuation byte); save the file as UTF-8"),
    ("rows.jsonl", _surrogate_row, "row 13: field 'answer' is not valid Unicode (a lone surrogate at character 2)"),
    ("rows.jsonl", _latin1_row, "row 4: not UTF-8 text (invalid continuation byte)"),
    ("rows.parquet", _latin1_parquet, "row 2: field 'answer' is not UTF-8 text (invalid continuation byte)"),
], ids=["text", "jsonl-surrogate", "jsonl-latin1", "parquet-latin1"])
def test_training_on_text_that_is_not_utf8_names_the_file_and_line(tmp_path, capsys, name, write, message):
    """A Latin-1 line was read as U+FFFD (errors="replace") and trained into the vocabulary without a word; a
    lone surrogate or a Parquet string that is not UTF-8 was a traceback."""
    write(tmp_path / name)
    assert main(["tokenizer", "train", "--input", str(tmp_path / name), "--vocab-size", "600",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / name}: {message}" in err and "Traceback" not in err, err
    assert not (tmp_path / "out" / "tokenizer.model").exists()


def test_a_byte_order_mark_is_no_character_of_the_corpus_and_strings_must_be_unicode(tmp_path):
    from r1jax.rl.data import file_corpus

    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfcaf\xc3\xa9\nau lait\n")
    assert list(file_corpus(tmp_path / "bom.txt"))[-2:] == ["café", "au lait"]
    with pytest.raises(UserError, match=r"tokenizer corpus: text 2 is not valid Unicode \(character U\+D800 at "):
        train_tokenizer(["plain words", "a \ud800 b"] * 20, 600)  # a RuntimeError from sentencepiece's binding
