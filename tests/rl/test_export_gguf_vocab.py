"""`r1jax export-gguf`'s tokenizer keys, read back with llama.cpp's own reader (gguf.GGUFReader): a sentencepiece
vocabulary and a Hugging Face tokenizer.json as llama.cpp's converter (convert_hf_to_gguf.py) writes them (token
types, merges, pre-tokenizer names, bos and add_bos_token, the chat template), and a unigram tokenizer refused.
Tensors and architecture metadata: test_export_gguf.py."""

import dataclasses
import json

import gguf
import pytest
from tokenizers import AddedToken, Tokenizer

from r1jax.errors import UserError
from r1jax.model.factory import init_policy
from r1jax.model.hf_tokenizer import chat_template, read_model_proto
from r1jax.model.tokenizer import HFTokenizer, train_tokenizer
from r1jax.rl.gguf_export import export_gguf
from r1jax.rl.gguf_export.vocab import PRE_TOKENIZERS
from tests.model.hf_tokenizer_files import write_hf_tokenizer
from tests.rl.test_export_gguf import CONFIGS, CORPUS, VOCAB, read


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, 300)


def test_sentencepiece_tokenizer_keys(tokenizer, tmp_path):
    export_gguf(init_policy(CONFIGS["qwen3_moe"], 0), tmp_path / "m.gguf", tokenizer, "f32", template="r1_zero")
    fields, _ = read(tmp_path / "m.gguf")
    _, pieces = read_model_proto(tokenizer.model_proto)
    pad = VOCAB - len(pieces)
    assert fields["tokenizer.ggml.model"] == "llama"
    assert fields["tokenizer.ggml.tokens"] == [p for p, _, _ in pieces] + [f"[PAD{i}]" for i in range(300, VOCAB)]
    assert fields["tokenizer.ggml.scores"] == pytest.approx([s for _, s, _ in pieces] + [-1000.0] * pad)
    types = fields["tokenizer.ggml.token_type"]
    assert types[:4] == [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL,
                         gguf.TokenType.CONTROL]  # <unk> <s> </s> <pad>
    assert types[4:8] == [gguf.TokenType.USER_DEFINED] * 4  # <think> </think> <answer> </answer>
    assert types[8:8 + 256] == [gguf.TokenType.BYTE] * 256 and types[-pad:] == [gguf.TokenType.UNUSED] * pad
    assert [fields[f"tokenizer.ggml.{k}"] for k in ("bos_token_id", "eos_token_id", "unknown_token_id",
                                                    "padding_token_id", "add_bos_token", "add_eos_token",
                                                    "add_space_prefix")] == [1, 2, 0, 3, True, False, False]
    assert fields["tokenizer.chat_template"] == chat_template("r1_zero")


def test_hugging_face_tokenizer_keys_and_pre_tokenizer_names(tmp_path):
    tok = HFTokenizer.load(write_hf_tokenizer(tmp_path / "qwen", "qwen"))
    cfg = dataclasses.replace(CONFIGS["qwen3_moe"], vocab_size=640)
    policy = init_policy(cfg, 0)
    export_gguf(policy, tmp_path / "q.gguf", tok, "f32")
    fields, _ = read(tmp_path / "q.gguf")
    data = json.loads((tmp_path / "qwen" / "tokenizer.json").read_text())
    assert (fields["tokenizer.ggml.model"], fields["tokenizer.ggml.pre"]) == ("gpt2", "qwen2")
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    assert len(tokens) == 640 and all(tokens[i] == t for t, i in data["model"]["vocab"].items())
    im_end, think = tok.eos_ids[0], tok.encode("<think>")[0]
    assert (tokens[im_end], types[im_end]) == ("<|im_end|>", gguf.TokenType.CONTROL)
    assert (tokens[think], types[think]) == ("<think>", gguf.TokenType.USER_DEFINED)
    assert fields["tokenizer.ggml.merges"] == [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    assert (fields["tokenizer.ggml.eos_token_id"], fields["tokenizer.ggml.add_bos_token"]) == (im_end, False)
    assert fields["tokenizer.ggml.bos_token_id"] == tokens.index("<|endoftext|>")  # Qwen has no bos: see below
    assert fields["tokenizer.chat_template"] == tok.chat_template.source
    # DeepSeek-V3's three split regexes name llama.cpp's deepseek-v3 pre-tokenizer; unknown regexes are refused
    def split(regex):
        return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}

    deepseek = [split(r) for r in next(k for k, v in PRE_TOKENIZERS.items() if v == "deepseek-v3")]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    for splits, outcome in ((deepseek, "deepseek-v3"), ([split(r"\w+")], None)):
        data["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [*splits, byte_level]}
        files = {**tok.files, "tokenizer.json": json.dumps(data).encode()}
        other = HFTokenizer(files, str(tmp_path / "edited"))
        if outcome is None:
            with pytest.raises(UserError, match=r"edited/tokenizer.json: pre-tokenizer split regexes \['\\\\w\+'\]"):
                export_gguf(policy, tmp_path / "x.gguf", other, "f32")
            assert not list(tmp_path.glob("*x.gguf*"))  # no partial file
        else:
            export_gguf(policy, tmp_path / "d.gguf", other, "f32")
            assert read(tmp_path / "d.gguf")[0]["tokenizer.ggml.pre"] == outcome


@pytest.mark.parametrize("style,bos_token", [("qwen", "<|endoftext|>"), ("deepseek", None)])
def test_add_bos_token_says_whether_the_tokenizer_puts_bos_first_as_transformers_encodes(tmp_path, style, bos_token):
    """A bos token the config names but the post-processor never adds (Qwen's ByteLevel, given a bos_token):
    add_bos_token false, as transformers encodes "a" without it; DeepSeek's TemplateProcessing adds it: true."""
    import transformers

    directory = write_hf_tokenizer(tmp_path / style, style)
    if bos_token is not None:
        config = json.loads((directory / "tokenizer_config.json").read_text())
        (directory / "tokenizer_config.json").write_text(json.dumps({**config, "bos_token": bos_token}))
    tok = HFTokenizer.load(directory)
    auto = transformers.AutoTokenizer.from_pretrained(str(directory))
    assert tok.bos_id is not None and tok.bos_id == auto.bos_token_id
    cfg = dataclasses.replace(CONFIGS["qwen3_moe"], vocab_size=640)
    export_gguf(init_policy(cfg, 0), tmp_path / "m.gguf", tok, "f32")
    fields, _ = read(tmp_path / "m.gguf")
    assert fields["tokenizer.ggml.add_bos_token"] == (auto("a")["input_ids"][0] == auto.bos_token_id) == (
        style == "deepseek")


def test_added_tokens_that_look_special_are_control_as_llama_cpps_converter_types_them(tmp_path):
    """convert_hf_to_gguf.py types an added token control when it is special or looks special
    (does_token_look_special): Qwen's FIM tokens and DeepSeek's <｜...｜> placeholders ship unmarked. Other added
    tokens, near misses included, stay user-defined."""
    tok = HFTokenizer.load(write_hf_tokenizer(tmp_path / "qwen", "qwen"))
    looks_special = ["<|fim_prefix|>", "<｜place▁holder▁no▁0｜>", "<pad>", "<mask>", "<2mass>", "[@BOS@]", "<unused0>"]
    plain = ["<tool_call>", "<|fim_pad>", "<｜User|>", "<Pad>", "[BOS]", "<use0>"]
    edited = Tokenizer.from_str(tok.files["tokenizer.json"].decode())
    edited.add_tokens([AddedToken(t, special=False, normalized=False) for t in looks_special + plain])
    other = HFTokenizer({**tok.files, "tokenizer.json": edited.to_str().encode()}, str(tmp_path / "edited"))
    export_gguf(init_policy(dataclasses.replace(CONFIGS["qwen3_moe"], vocab_size=640), 0), tmp_path / "m.gguf",
                other, "f32")
    fields, _ = read(tmp_path / "m.gguf")
    types = dict(zip(fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]))
    control, user_defined = gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED
    assert {t: types[t] for t in looks_special + plain} == {**dict.fromkeys(looks_special, control),
                                                           **dict.fromkeys(plain, user_defined)}
    assert (types["<|im_end|>"], types["<think>"]) == (control, user_defined)  # marked special / not


def test_a_unigram_sentencepiece_tokenizer_is_refused(tokenizer, tmp_path):
    """llama.cpp's SPM tokenizer merges only pairs of vocabulary pieces, as sentencepiece's bpe does: it splits
    a unigram vocabulary's words differently (into characters, often), and its UGM (t5) tokenizer differs more.
    So a unigram tokenizer is refused, before any file is written; a bpe one exports."""
    unigram = train_tokenizer(CORPUS, VOCAB, model_type="unigram")
    policy = init_policy(CONFIGS["qwen3_moe"], 0)
    with pytest.raises(UserError, match=r"the tokenizer is a sentencepiece unigram model; .* retrain the tokenizer "
                                        r"with tokenizer.model_type=bpe"):
        export_gguf(policy, tmp_path / "m.gguf", unigram, "f32")
    assert list(tmp_path.iterdir()) == []
    export_gguf(policy, tmp_path / "m.gguf", tokenizer, "f32")
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]


def test_bos_of_a_tokenizer_without_one_is_what_llama_cpps_converter_writes(tmp_path):
    """Qwen's tokenizer has no bos. llama.cpp's converter writes config.json's bos_token_id (<|endoftext|> in
    Qwen3's, as in its generation_config.json, which the tokenizer carries); without the key llama.cpp's gpt2
    vocabulary would take token 11. No such id: <|endoftext|> by its text, else the first eos."""
    tok = HFTokenizer.load(write_hf_tokenizer(tmp_path / "qwen", "qwen"))
    policy = init_policy(dataclasses.replace(CONFIGS["qwen3_moe"], vocab_size=640), 0)
    generation = json.loads(tok.files["generation_config.json"])
    end_of_text, im_start = generation["bos_token_id"], tok.encode("<|im_start|>")[0]
    no_bos = json.dumps({k: v for k, v in generation.items() if k != "bos_token_id"}).encode()
    renamed = {name: tok.files[name].replace(b"<|endoftext|>", b"<|eot|>")
               for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")}

    def bos(files):
        export_gguf(policy, tmp_path / "m.gguf", HFTokenizer({**tok.files, **files}), "f32", force=True)
        return read(tmp_path / "m.gguf")[0]["tokenizer.ggml.bos_token_id"]

    assert bos({}) == end_of_text
    assert bos({"generation_config.json": json.dumps({**generation, "bos_token_id": im_start}).encode()}) == im_start
    assert bos({"generation_config.json": no_bos}) == end_of_text
    assert bos({**renamed, "generation_config.json": no_bos}) == tok.eos_ids[0] != end_of_text
