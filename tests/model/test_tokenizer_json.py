"""The Hugging Face tokenizer back end against transformers' AutoTokenizer on the same files (made in the test),
the loader that picks a back end, byte-identical saving, and the errors for bad files."""

import json
import shutil

import pytest
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

from r1jax.errors import UserError
from r1jax.model.tokenizer import Tokenizer, is_tokenizer_dir, load_tokenizer, train_tokenizer
from r1jax.model.tokenizer_json import FILES, HFTokenizer
from tests.model.hf_tokenizer_files import DEEPSEEK_BOS, STYLES, write_hf_tokenizer

TEXTS = ["", "Hello world", "What is 12 + 35? The answer is 47.", "  two  spaces\t\n\r\n  ", "\n\n\n",
         "日本語のテキスト 🎉 é e\u0301 ﬁ ½ ２", "\x00 \u200b \U000f0000", "don't stop , he said !",
         "<|im_start|>user\nhi<|im_end|>\n", "a<|endoftext|>b<|im_end|><|im_end|>", "<think>x</think> <think>",
         "<think\n", DEEPSEEK_BOS + "hi" + "<｜end▁of▁sentence｜>", "<｜User｜>q<｜Assistant｜>",
         "def f(x):\n    return x * 2  # comment"]


@pytest.fixture(scope="module", params=STYLES)
def pair(request, tmp_path_factory):
    """(style, our HFTokenizer, transformers' tokenizer) on one directory of files."""
    directory = write_hf_tokenizer(tmp_path_factory.mktemp(request.param), request.param)
    auto = transformers.AutoTokenizer.from_pretrained(str(directory))
    assert isinstance(auto, transformers.PreTrainedTokenizerFast)
    return request.param, load_tokenizer(directory), auto


@pytest.mark.parametrize("text", TEXTS)
def test_ids_and_text_equal_transformers(pair, text):
    _, tok, auto = pair
    ids = tok.encode(text)
    assert ids == auto(text, add_special_tokens=False)["input_ids"]
    if not text.startswith(DEEPSEEK_BOS):  # transformers would add a second bos there; we do not (below)
        assert tok.encode(text, add_bos=True) == auto(text)["input_ids"]
    assert tok.decode(ids) == auto.decode(ids, skip_special_tokens=True)
    assert tok.decode(ids, skip_special_tokens=False) == auto.decode(ids)


@settings(max_examples=150, deadline=None)
@given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
       | st.lists(st.sampled_from(["<|im_end|>", "<think>", "</think>", " ", "\n", "a", "12", "é", "<|", "|>",
                                   DEEPSEEK_BOS]), max_size=12).map("".join))
def test_any_text_encodes_and_decodes_as_transformers_does(pair, text):
    _, tok, auto = pair
    ids = tok.encode(text)
    assert ids == auto(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == auto.decode(ids, skip_special_tokens=True)


def test_special_ids_follow_the_configs(pair):
    style, tok, auto = pair
    assert tok.vocab_size == len(auto)
    assert tok.bos_id == auto.bos_token_id and tok.pad_id == auto.pad_token_id
    assert tok.eos_id == auto.eos_token_id  # the config's eos first: the one a completion is closed with
    generation = json.loads(tok.files["generation_config.json"])
    assert len(generation["eos_token_id"]) == 2 and set(tok.eos_ids) == {auto.eos_token_id,
                                                                        *generation["eos_token_id"]}
    if style == "qwen":  # no bos at all; a sequence start is the text alone
        assert tok.bos_id is None and tok.encode("hi", add_bos=True) == tok.encode("hi")
        assert tok.eos_ids == (auto.convert_tokens_to_ids("<|im_end|>"), auto.convert_tokens_to_ids("<|endoftext|>"))
    else:  # the post-processor puts bos first, once, also when the text already begins with it
        assert tok.encode("hi", add_bos=True) == [tok.bos_id, *tok.encode("hi")]
        assert tok.encode(DEEPSEEK_BOS + "hi", add_bos=True) == [tok.bos_id, *tok.encode("hi")]
    assert tok.encode("hi", add_eos=True) == [*tok.encode("hi"), tok.eos_id]
    assert tok.decode([*tok.encode("ok"), *tok.eos_ids, tok.pad_id, tok.vocab_size + 5]) == "ok"


@pytest.mark.parametrize("template_file", [False, True])
def test_save_writes_the_original_files_byte_for_byte(tmp_path, template_file):
    source = write_hf_tokenizer(tmp_path / "src", "qwen", template_file=template_file)
    (source / "tokenizer.model.unrelated").write_text("not carried")
    tok = load_tokenizer(source)
    path = tok.save(tmp_path / "ck" / "tokenizer")
    assert path == tmp_path / "ck" / "tokenizer" / "tokenizer.json"
    expected = sorted(p.name for p in source.iterdir() if p.name in FILES)
    assert len(expected) == 5 if template_file else 4
    assert sorted(p.name for p in path.parent.iterdir()) == expected
    for name in expected:
        assert (path.parent / name).read_bytes() == (source / name).read_bytes(), name
    again = load_tokenizer(path.parent)
    assert again == tok and hash(again) == hash(tok)
    auto = transformers.AutoTokenizer.from_pretrained(str(path.parent))
    assert again.encode("What is 2+2?<|im_end|>") == auto("What is 2+2?<|im_end|>")["input_ids"]


def test_a_save_cut_short_keeps_the_files_it_replaces(tmp_path, monkeypatch):
    """Saved beside every checkpoint: a save that dies between writing and renaming (a kill, a full disk) keeps
    the previous tokenizer.json whole (it was rewritten in place: 4,096 of 8,297 bytes, unloadable)."""
    import os

    tok = load_tokenizer(write_hf_tokenizer(tmp_path / "src", "qwen"))
    path = tok.save(tmp_path / "ck")
    before = path.read_bytes()

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        tok.save(tmp_path / "ck")
    assert path.read_bytes() == before and load_tokenizer(path.parent) == tok


@pytest.mark.parametrize("style", STYLES)
def test_tokens_the_config_names_are_skipped_in_decode_though_tokenizer_json_marks_them_ordinary(tmp_path, style):
    # transformers registers eos / pad / bos named in tokenizer_config.json as special whatever tokenizer.json
    # says: a pad or eos generated mid-completion leaves the decoded text, as in its decode
    directory = write_hf_tokenizer(tmp_path, style)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    named = {v if isinstance(v, str) else v["content"] for k, v in config.items()
             if k in ("bos_token", "eos_token", "pad_token") and v}
    data = json.loads((directory / "tokenizer.json").read_text())
    for token in data["added_tokens"]:
        if token["content"] in named:
            token["special"] = False
    (directory / "tokenizer.json").write_text(json.dumps(data))
    for token in config.get("added_tokens_decoder", {}).values():
        if token["content"] in named:
            token["special"] = False
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    tok, auto = load_tokenizer(directory), transformers.AutoTokenizer.from_pretrained(str(directory))
    ids = tok.encode("hi" + "x".join(sorted(named)) + "y")
    assert any(tok.decode([i]) == "" and tok.decode([i], skip_special_tokens=False) in named for i in ids)
    assert tok.decode(ids) == auto.decode(ids, skip_special_tokens=True)
    assert tok.decode(ids, skip_special_tokens=False) == auto.decode(ids)


@pytest.mark.parametrize("split_special_tokens", [False, True])
def test_truncation_padding_and_split_special_tokens_apply_as_in_transformers(tmp_path, split_special_tokens):
    """tokenizer.json's own truncation / padding do not apply to encoding (transformers turns them off unless
    asked); tokenizer_config's split_special_tokens makes special tokens in text ordinary characters."""
    directory = write_hf_tokenizer(tmp_path, "qwen")
    data = json.loads((directory / "tokenizer.json").read_text())
    data["truncation"] = {"direction": "Right", "max_length": 3, "strategy": "LongestFirst", "stride": 0}
    data["padding"] = {"strategy": {"Fixed": 64}, "direction": "Right", "pad_to_multiple_of": None, "pad_id": 0,
                       "pad_type_id": 0, "pad_token": "<|endoftext|>"}
    (directory / "tokenizer.json").write_text(json.dumps(data))
    _edit_json("tokenizer_config.json", split_special_tokens=split_special_tokens)(directory)
    tok, auto = load_tokenizer(directory), transformers.AutoTokenizer.from_pretrained(str(directory))
    text = "a longer text than three tokens <|im_end|> <think>"
    assert tok.encode(text) == auto(text, add_special_tokens=False)["input_ids"]
    assert len(tok.encode(text)) > 10
    assert (auto.convert_tokens_to_ids("<|im_end|>") in tok.encode(text)) != split_special_tokens


def test_load_tokenizer_picks_the_back_end_by_the_files_present(tmp_path):
    hf_dir = write_hf_tokenizer(tmp_path / "hf", "qwen")
    sp = train_tokenizer(["plain words and numbers 12 34"] * 20, 300)
    sp.save(tmp_path / "sp")
    assert isinstance(load_tokenizer(hf_dir), HFTokenizer)
    assert isinstance(load_tokenizer(hf_dir / "tokenizer.json"), HFTokenizer)
    assert load_tokenizer(tmp_path / "sp") == sp and load_tokenizer(tmp_path / "sp" / "tokenizer.model") == sp
    shutil.copy(tmp_path / "sp" / "tokenizer.model", hf_dir)
    assert isinstance(load_tokenizer(hf_dir), HFTokenizer)  # both: tokenizer.json, as transformers prefers
    assert isinstance(load_tokenizer(tmp_path / "sp"), Tokenizer) and sp.eos_ids == (sp.eos_id,) == (2,)
    (tmp_path / "empty").mkdir()
    for where in ("empty", "missing"):
        with pytest.raises(UserError, match=f"{where}.*tokenizer.json .*tokenizer.model"):
            load_tokenizer(tmp_path / where)


def _broken(tmp_path, name: str, edit) -> str:
    directory = write_hf_tokenizer(tmp_path / name, "qwen")
    edit(directory)
    with pytest.raises(UserError) as err:
        load_tokenizer(directory)
    return str(err.value)


def _edit_json(file: str, **changes):
    def edit(directory):
        content = json.loads((directory / file).read_text())
        content.update(changes)
        (directory / file).write_text(json.dumps(content))
    return edit


def test_bad_files_are_named(tmp_path):
    message = _broken(tmp_path, "a", lambda d: (d / "tokenizer.json").write_text("{not json"))
    assert "tokenizer.json is not a tokenizers file" in message
    message = _broken(tmp_path, "b", lambda d: (d / "tokenizer_config.json").write_text("[1, "))
    assert "tokenizer_config.json is not valid JSON" in message
    message = _broken(tmp_path, "c", _edit_json("tokenizer_config.json", eos_token="<|nope|>"))
    assert "tokenizer_config.json: eos_token '<|nope|>' is not a token" in message
    message = _broken(tmp_path, "d", _edit_json("generation_config.json", eos_token_id=[2, 10 ** 6]))
    assert "generation_config.json eos_token_id = 1000000" in message
    message = _broken(tmp_path, "e", lambda d: (_edit_json("tokenizer_config.json", eos_token=None)(d),
                                               _edit_json("generation_config.json", eos_token_id=None)(d)))
    assert "no eos token" in message
    # a directory named like a file was skipped: the tokenizer went without its config (or import-hf without
    # a tokenizer at all)
    for name, replaced in (("f", "tokenizer_config.json"), ("g", "tokenizer.json")):
        def as_directory(directory, replaced=replaced):
            (directory / replaced).unlink()
            (directory / replaced).mkdir()
        assert f"{replaced} is not a file" in _broken(tmp_path, name, as_directory)
    assert is_tokenizer_dir(tmp_path / "g")  # so import-hf reads it, and names it


@pytest.mark.parametrize("value", [151645, {"content": 7}, ["<|im_end|>"]])
def test_a_special_token_that_is_not_a_tokens_text_is_named(tmp_path, value):
    # an id where the token's text goes (a hand edit to end SFT rows with <|im_end|>): it was left out, and the
    # eos stayed generation_config.json's first id with no word said
    message = _broken(tmp_path, "a", _edit_json("tokenizer_config.json", eos_token=value))
    assert f"tokenizer_config.json: eos_token = {value!r}: expected the token's text" in message


def test_a_foreign_sentencepiece_model_names_the_file_and_what_r1jax_reads(tmp_path):
    """A Hugging Face directory whose tokenizer is only tokenizer.model (Llama-style sentencepiece): the file,
    what r1jax reads (tokenizer.json) and how to get one; elsewhere, how to get an r1jax tokenizer."""
    import sentencepiece as spm

    hf_dir, plain = tmp_path / "hf", tmp_path / "plain"
    for directory in (hf_dir, plain):
        directory.mkdir()
        spm.SentencePieceTrainer.train(sentence_iterator=iter(["plain words and numbers 12 34"] * 50),
                                       model_prefix=str(directory / "tokenizer"), vocab_size=40, hard_vocab_limit=False,
                                       minloglevel=2)
    (hf_dir / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    with pytest.raises(UserError) as err:
        load_tokenizer(hf_dir)
    message = str(err.value)
    for fragment in (f"tokenizer file '{hf_dir / 'tokenizer.model'}' is a sentencepiece model but not an r1jax",
                     "tokenizer.json only", f"AutoTokenizer.from_pretrained('{hf_dir}').save_pretrained(",
                     "tokenizer.path"):
        assert fragment in message, message
    assert "r1jax tokenizer train" not in message
    with pytest.raises(UserError, match=f"'{plain / 'tokenizer.model'}' is a sentencepiece model but not an r1jax "
                                        r"tokenizer .*; train one with `r1jax tokenizer train`"):
        load_tokenizer(plain)


def test_without_generation_config_the_eos_ids_of_config_json_stop_rows_as_in_transformers(tmp_path):
    """transformers builds the generation config from config.json when generation_config.json is absent (a
    Base checkpoint whose tokenizer's eos is <|endoftext|> and whose config.json lists <|im_end|> too): r1jax stopped
    on the tokenizer's eos alone. The made generation_config.json travels with the tokenizer's saved copy."""
    directory = write_hf_tokenizer(tmp_path / "hf", "qwen")
    _edit_json("tokenizer_config.json", eos_token="<|endoftext|>")(directory)
    generation = json.loads((directory / "generation_config.json").read_text())
    (directory / "config.json").write_text(json.dumps({"model_type": "qwen3_moe", **generation}))
    with_file = load_tokenizer(directory)  # generation_config.json present: config.json is not read
    (directory / "generation_config.json").unlink()
    (directory / "config.json").write_text(json.dumps({"model_type": "qwen3_moe", "bos_token_id": 5,
                                                       "eos_token_id": generation["eos_token_id"][::-1]}))
    tok = load_tokenizer(directory)
    theirs = transformers.GenerationConfig.from_pretrained(directory, config_file_name="config.json")
    endoftext = tok.encode("<|endoftext|>")[0]
    assert tok.eos_id == endoftext and set(tok.eos_ids) == {endoftext, *theirs.eos_token_id}
    assert tok.eos_ids == with_file.eos_ids and len(tok.eos_ids) == 2
    assert tok.model_bos_id == theirs.bos_token_id == 5
    again = load_tokenizer(tok.save(tmp_path / "copy").parent)
    assert again == tok and again.eos_ids == tok.eos_ids


@pytest.mark.parametrize("style", STYLES)
def test_the_exported_bos_token_id_is_the_one_the_configs_name(tmp_path, style):
    """Qwen's tokenizer has no bos token, yet its config.json and generation_config.json name one: export-hf
    wrote bos_token_id null into config.json."""
    from r1jax.model.hf_tokenizer import token_ids

    directory = write_hf_tokenizer(tmp_path, style)
    tok = load_tokenizer(directory)
    named = json.loads((directory / "generation_config.json").read_text())["bos_token_id"]
    assert token_ids(tok)["bos_token_id"] == named == (tok.bos_id if style == "deepseek" else named)
    assert (tok.bos_id is None) == (style == "qwen")


@pytest.mark.parametrize("style", STYLES)
def test_clean_up_of_tokenization_spaces_is_skipped_for_bpe_as_in_transformers(tmp_path, style):
    """`clean_up_tokenization_spaces: true` in a BPE tokenizer's config: transformers leaves the decoded text as it
    is (the clean-up would delete real spaces before punctuation and in contractions)."""
    directory = write_hf_tokenizer(tmp_path, style)
    _edit_json("tokenizer_config.json", clean_up_tokenization_spaces=True)(directory)
    tok, auto = load_tokenizer(directory), transformers.AutoTokenizer.from_pretrained(str(directory))
    for text in ("don't stop , he said ! a . b ?", "it 's n't 're", *TEXTS):
        ids = tok.encode(text)
        assert tok.decode(ids) == auto.decode(ids, skip_special_tokens=True)
    assert tok.decode(tok.encode("a , b")) == "a , b"


def test_without_a_pad_token_rows_are_padded_with_the_first_eos_as_transformers_generate_does(tmp_path):
    """No pad token in any config and several eos ids: transformers' generate pads with the generation config's
    first eos id (`_prepare_special_tokens`), which is also the tokenizer's own eos here."""
    directory = write_hf_tokenizer(tmp_path, "qwen")
    _edit_json("tokenizer_config.json", pad_token=None)(directory)
    _edit_json("special_tokens_map.json", pad_token=None)(directory)
    generation = json.loads((directory / "generation_config.json").read_text())
    del generation["pad_token_id"]
    (directory / "generation_config.json").write_text(json.dumps(generation))
    tok = load_tokenizer(directory)
    theirs = transformers.GenerationConfig.from_pretrained(directory)
    im_end, endoftext = tok.encode("<|im_end|>")[0], tok.encode("<|endoftext|>")[0]
    assert theirs.pad_token_id is None and theirs.eos_token_id == [im_end, endoftext]
    assert tok.eos_ids == (im_end, endoftext) and tok.pad_id == im_end


def _edited_qwen(tmp_path, config=None, generation=None):
    """The qwen-style files with tokenizer_config / generation_config entries replaced (None: removed)."""
    directory = write_hf_tokenizer(tmp_path / "tok", "qwen")
    for name, changes in (("tokenizer_config.json", config), ("generation_config.json", generation)):
        content = json.loads((directory / name).read_text())
        for key, value in (changes or {}).items():
            content.pop(key) if value is None else content.__setitem__(key, value)
        (directory / name).write_text(json.dumps(content))
    return directory


def test_the_pad_id_is_the_pad_token_else_generation_configs_else_the_first_eos(tmp_path):
    plain = load_tokenizer(write_hf_tokenizer(tmp_path / "plain", "qwen"))
    think = plain.encode("<think>")[0]
    tok = HFTokenizer.load(_edited_qwen(tmp_path / "a", config={"pad_token": None},
                                        generation={"pad_token_id": think}))
    assert tok.pad_id == think != plain.pad_id
    tok = HFTokenizer.load(_edited_qwen(tmp_path / "b", config={"pad_token": None}, generation={"pad_token_id": None}))
    assert tok.pad_id == tok.eos_ids[0] == plain.encode("<|im_end|>")[0]


def test_a_list_of_named_chat_templates_uses_the_default_one(tmp_path):
    templates = [{"name": "tool_use", "template": "TOOLS {{ messages[0]['content'] }}"},
                 {"name": "default", "template": "DEFAULT {{ messages[0]['content'] }}"}]
    tok = HFTokenizer.load(_edited_qwen(tmp_path, config={"chat_template": templates}))
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "DEFAULT hi"
    # none named 'default' (transformers refuses to pick one): named as such, not as a tokenizer without a template
    tok = HFTokenizer.load(_edited_qwen(tmp_path / "none", config={"chat_template": templates[:1]}))
    with pytest.raises(UserError, match=r"chat_template is a list of named templates \('tool_use'\) without one "
                                        r"named 'default'"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])


def test_generation_config_ids_must_be_ids_of_the_vocabulary(tmp_path):
    size = load_tokenizer(write_hf_tokenizer(tmp_path / "plain", "qwen")).vocab_size
    assert size - 1 in HFTokenizer.load(_edited_qwen(tmp_path / "last", generation={"eos_token_id": size - 1})).eos_ids
    with pytest.raises(UserError, match=rf"eos_token_id = {size}: expected a token id in \[0, {size}\)"):
        HFTokenizer.load(_edited_qwen(tmp_path / "past", generation={"eos_token_id": size}))
    # a bos only named in the configs is left out when it is no id (qwen's tokenizer has no bos token)
    for index, value in enumerate((size, True, -1)):
        assert HFTokenizer.load(_edited_qwen(tmp_path / f"bos{index}", generation={"bos_token_id": value})
                                ).model_bos_id is None
    assert HFTokenizer.load(_edited_qwen(tmp_path / "bos", generation={"bos_token_id": size - 1})).model_bos_id \
        == size - 1


def test_the_clean_up_of_tokenization_spaces_is_transformers_own():
    """For a tokenizer that is no BPE (a WordPiece, a Unigram) with the clean-up on, decode cleans as transformers'
    clean_up_tokenization does, every punctuation mark and contraction of it."""
    from r1jax.model.tokenizer_json import _clean_up_tokenization

    text = "a . b ? c ! d , e ' f don 't I 'm it 's n't we 've they 're ok"
    assert _clean_up_tokenization(text) == transformers.PreTrainedTokenizerBase.clean_up_tokenization(None, text)
    assert _clean_up_tokenization(text) != text
