"""The tokenizer inside a GGUF file, so llama.cpp needs nothing else.

- r1jax's sentencepiece tokenizer (model_type bpe) -> `tokenizer.ggml.model = llama` (llama.cpp's SPM
  tokenizer): the pieces, their scores and types (normal, unknown, control, user-defined for R1's tags, byte
  for the 256 byte-fallback pieces), no space prefix (r1jax trains without a dummy prefix), bos added to
  every sequence (every sequence r1jax trains on starts with <s>). The chat template renders the
  checkpoint's prompt format, as `export-hf` writes it (`model.hf_tokenizer.chat_template`). A unigram
  tokenizer is refused: SPM only merges pairs of vocabulary pieces, so it splits a unigram vocabulary's words
  into other pieces (often characters), and llama.cpp's UGM (`t5`) tokenizer differs from it more still.
  Known gap: r1jax escapes U+2581 and U+F0000 in text before sentencepiece; llama.cpp does not, so text
  containing those two characters tokenizes differently there.
- the same, for a Hugging Face tokenizer whose tokenizer.json is r1jax's conversion of the tokenizer.model
  beside it (`model.hf_tokenizer.written_from`): what `export-hf` writes for an r1jax tokenizer and `import-hf`
  brings back, so a model moved through the hub exports without its run directory. Its ids and chat template
  are the tokenizer's (those r1jax runs it with); where that tokenizer.json differs from its model (the known
  gaps of `model.hf_tokenizer`, e.g. a literal "<s>" in text), llama.cpp tokenizes as the model. A
  tokenizer.model that is not its tokenizer.json's source (a Llama-style repository's, a tokenizer.json edited
  since) is ignored: the tokenizer.json is exported as below.
- a Hugging Face tokenizer.json (a byte-level BPE, as Qwen3's and DeepSeek-V3's) -> `tokenizer.ggml.model =
  gpt2`: the vocabulary in id order, the merges, token types (typed as llama.cpp's convert_hf_to_gguf.py
  types them: added tokens control when special or when they look special, `_looks_special`, other added
  tokens user-defined) and `tokenizer.ggml.pre`, the name of llama.cpp's built-in pre-tokenizer regexes,
  chosen by comparing the file's split regexes with those of Qwen2/Qwen3 (`qwen2`) and DeepSeek-V3
  (`deepseek-v3`); any other pre-tokenizer is refused, since llama.cpp would split text differently. bos is
  added when the tokenizer's post-processor adds it; the chat template is the tokenizer's own.
Ids: bos, eos (the first of its eos ids; llama.cpp also ends generation at well-known end tokens such as
<|endoftext|> by their text), pad, unk (sentencepiece). A tokenizer without bos (Qwen's) gets the id
llama.cpp's converter writes, config.json's bos_token_id (else llama.cpp's gpt2 vocabulary takes token 11):
generation_config.json, which the tokenizer carries, holds the same id; else <|endoftext|>, else the first
eos. Ids past the tokenizer up to the model's vocab_size are `[PAD<id>]` tokens of type unused, as
llama.cpp's converter writes them: the token list must have one entry per embedding row.
"""

from __future__ import annotations

import json
from typing import Any

import gguf

from r1jax.errors import UserError
from r1jax.model.hf_tokenizer import chat_template, read_model_proto, written_from
from r1jax.model.tokenizer import Tokenizer, TokenizerLike
from r1jax.model.tokenizer_json import GENERATION_JSON, SENTENCEPIECE_MODEL, TOKENIZER_JSON, HFTokenizer

_SP_TYPES = {"normal": gguf.TokenType.NORMAL, "unknown": gguf.TokenType.UNKNOWN, "control": gguf.TokenType.CONTROL,
             "user_defined": gguf.TokenType.USER_DEFINED, "unused": gguf.TokenType.UNUSED,
             "byte": gguf.TokenType.BYTE}
# tokenizer.json split regexes -> llama.cpp's pre-tokenizer name (src/llama-vocab.cpp)
PRE_TOKENIZERS = {
    ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
     "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",): "qwen2",
    ("\\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+",
     "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
     "| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"): "deepseek-v3",
}
PAD_SCORE = -1000.0  # the score llama.cpp's converter gives padding pieces
END_OF_TEXT = "<|endoftext|>"  # bos of a tokenizer without one and without a bos_token_id (module docstring)


def write_tokenizer(writer: gguf.GGUFWriter, tok: TokenizerLike, vocab_size: int, template: str) -> None:
    """The tokenizer keys for `tok`, padded to the model's `vocab_size`; `template` is the prompt format an
    r1jax tokenizer's chat template renders (a Hugging Face tokenizer keeps its own)."""
    if tok.vocab_size > vocab_size:
        raise UserError(f"the tokenizer has {tok.vocab_size} tokens, more than the model's vocab_size {vocab_size}")
    if isinstance(tok, Tokenizer):
        _sentencepiece(writer, tok.model_proto, tok, vocab_size, chat_template(template))
    elif isinstance(tok, HFTokenizer) and _is_sentencepiece_conversion(tok):
        _sentencepiece(writer, tok.files[SENTENCEPIECE_MODEL], tok, vocab_size,
                       tok.chat_template.source if tok.chat_template is not None else None)
    elif isinstance(tok, HFTokenizer):
        _byte_level_bpe(writer, tok, vocab_size)
    else:  # a new TokenizerLike back end without a GGUF form
        raise UserError(f"tokenizer {type(tok).__name__}: no GGUF form (expected sentencepiece or tokenizer.json)")


def _is_sentencepiece_conversion(tok: HFTokenizer) -> bool:
    """Whether `tok`'s tokenizer.json is r1jax's conversion of the r1jax tokenizer.model it carries."""
    proto = tok.files.get(SENTENCEPIECE_MODEL)
    if proto is None or not written_from(proto, tok.files[TOKENIZER_JSON].decode("utf-8")):
        return False
    try:
        Tokenizer(proto)  # r1jax's ids: the ids the SPM keys below name
    except (UserError, RuntimeError):  # another project's sentencepiece model
        return False
    return True


def _sentencepiece(writer: gguf.GGUFWriter, proto: bytes, tok: TokenizerLike, vocab_size: int,
                   template_source: str | None) -> None:
    """The SPM keys of sentencepiece model `proto`, with `tok`'s special ids and the chat template given."""
    model_type, pieces = read_model_proto(proto)
    if model_type != "bpe":  # llama.cpp would tokenize text differently (module docstring)
        raise UserError(f"the tokenizer is a sentencepiece {model_type} model; llama.cpp's SPM tokenizer "
                        "(tokenizer.ggml.model llama) tokenizes only bpe ones as sentencepiece does, so text would "
                        "tokenize differently there: retrain the tokenizer with tokenizer.model_type=bpe")
    pad = range(len(pieces), vocab_size)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([piece for piece, _, _ in pieces] + [f"[PAD{i}]" for i in pad])
    writer.add_token_scores([score for _, score, _ in pieces] + [PAD_SCORE] * len(pad))
    writer.add_token_types([_SP_TYPES[kind] for _, _, kind in pieces] + [gguf.TokenType.UNUSED] * len(pad))
    writer.add_add_space_prefix(False)
    writer.add_bos_token_id(tok.bos_id)
    writer.add_eos_token_id(tok.eos_id)
    writer.add_unk_token_id(next(i for i, (_, _, kind) in enumerate(pieces) if kind == "unknown"))
    writer.add_pad_token_id(tok.pad_id)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    if template_source is not None:
        writer.add_chat_template(template_source)


def _split_patterns(pre: Any) -> tuple[str, ...]:
    """The regexes of a tokenizer.json pre_tokenizer's Split steps, in order."""
    if not isinstance(pre, dict):
        return ()
    if pre.get("type") == "Sequence":
        return tuple(p for step in pre.get("pretokenizers", []) for p in _split_patterns(step))
    if pre.get("type") == "Split":
        pattern = pre.get("pattern", {})
        return (pattern.get("Regex", pattern.get("String")),)
    return ()


def _has_byte_level(pre: Any) -> bool:
    if not isinstance(pre, dict):
        return False
    return pre.get("type") == "ByteLevel" or any(_has_byte_level(p) for p in pre.get("pretokenizers", []))


def _byte_level_bpe(writer: gguf.GGUFWriter, tok: HFTokenizer, vocab_size: int) -> None:
    where = f"{tok.origin}/{TOKENIZER_JSON}"
    data = json.loads(tok.files[TOKENIZER_JSON].decode("utf-8"))
    model = data.get("model", {})
    if model.get("type") != "BPE" or not _has_byte_level(data.get("pre_tokenizer")):
        source = "is not the one it was written from" if SENTENCEPIECE_MODEL in tok.files else "is missing"
        raise UserError(f"{where}: a {model.get('type')} model without a ByteLevel pre-tokenizer; llama.cpp's "
                        "gpt2 tokenizer reads byte-level BPE tokenizers (as Qwen3's and DeepSeek-V3's), and an r1jax "
                        f"tokenizer's export goes through the sentencepiece {SENTENCEPIECE_MODEL} that export-hf "
                        f"writes beside it, which {source} there")
    patterns = _split_patterns(data.get("pre_tokenizer"))
    pre = PRE_TOKENIZERS.get(patterns)
    if pre is None:
        raise UserError(f"{where}: pre-tokenizer split regexes {list(patterns)} are not those of a pre-tokenizer "
                        f"llama.cpp knows by name (Qwen2/Qwen3's qwen2 or DeepSeek-V3's deepseek-v3)")
    added = {t["id"]: t for t in data.get("added_tokens", [])}
    by_id = {i: text for text, i in model.get("vocab", {}).items()}
    by_id.update({i: t["content"] for i, t in added.items()})
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL if i not in added else
                         gguf.TokenType.CONTROL if added[i].get("special") or _looks_special(by_id[i]) else
                         gguf.TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    probe = tok.encode("a")
    adds_bos = tok.bos_id is not None and len(tok.encode("a", add_bos=True)) > len(probe)
    writer.add_bos_token_id(_bos_id(tok, by_id))
    writer.add_eos_token_id(tok.eos_id)
    writer.add_pad_token_id(tok.pad_id)
    writer.add_add_bos_token(adds_bos)
    writer.add_add_eos_token(False)
    if tok.chat_template is not None:
        writer.add_chat_template(tok.chat_template.source)


def _looks_special(text: str) -> bool:
    """An added token llama.cpp's converter types control though not marked special (convert_hf_to_gguf.py's
    `does_token_look_special`: models such as deepseek-coder, gemma and Qwen's FIM tokens leave them unmarked)."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<\uff5c") and text.endswith("\uff5c>"))  # fullwidth bars, as DeepSeek writes them
            or (text.startswith("<unused") and text.endswith(">")))


def _bos_id(tok: HFTokenizer, by_id: dict[int, str]) -> int:
    """The tokenizer's bos; for one without (Qwen's), the bos id llama.cpp's converter writes (module docstring)."""
    if tok.bos_id is not None:
        return tok.bos_id
    generation = json.loads(tok.files[GENERATION_JSON].decode("utf-8")) if GENERATION_JSON in tok.files else {}
    bos = generation.get("bos_token_id")
    if type(bos) is int and bos in by_id:
        return bos
    return next((i for i in sorted(by_id) if by_id[i] == END_OF_TEXT), tok.eos_id)
