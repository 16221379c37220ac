"""The r1jax sentencepiece tokenizer as Hugging Face tokenizer files, written without transformers.

`save_hf_tokenizer` writes `tokenizer.json` (the `tokenizers` format `AutoTokenizer` loads as a fast
tokenizer), `tokenizer_config.json` (special tokens, `chat_template`), `special_tokens_map.json` and the
sentencepiece model itself as `tokenizer.model`, as Llama-style repositories ship it (transformers and r1jax
read tokenizer.json; `r1jax import-hf` carries the model along and `export-gguf` writes it as llama.cpp's SPM
tokenizer when `written_from` says the tokenizer.json is still its conversion):
- the model is the sentencepiece model's own: BPE (vocabulary plus merges recovered from the piece scores,
  as transformers' SentencePieceExtractor does) or Unigram (pieces and log-probabilities), byte fallback on;
- <unk> <s> </s> <pad> are special added tokens; the R1 tags are added tokens that are not special, so they
  stay one token wherever they appear and survive `skip_special_tokens`;
- normalizer and decoder mirror `model.tokenizer`: identity normalisation, no dummy prefix, spaces spelled
  U+2581, and r1jax's escape of U+2581 / U+F0000 undone after decoding;
- <s> (bos) starts every sequence, as every sequence r1jax trains on starts with it: the post-processor puts
  it before a text (`tokenizer(text)`, r1jax's `encode(text, add_bos=True)`), and the chat template writes
  it itself (transformers' `apply_chat_template` tokenizes without special tokens), so
  `apply_chat_template([user turn], add_generation_prompt=True)` gives r1jax's `render_prompt` ids.
Decoding ids gives r1jax's text (control ids dropped with `skip_special_tokens=True`, as r1jax always
drops them). Known gaps: an invalid byte run may yield a different number of U+FFFD than sentencepiece;
the two escape rules are applied one after the other, so text containing U+F0000 followed by "_" differs;
the control pieces are special added tokens, which transformers matches wherever their text appears, while
r1jax encodes a literal "<s>" in text as characters (a tokenizer.json cannot make a token that is never
matched in text). r1jax's ids: `tokenizer(text, split_special_tokens=True)`, and for chat templates
`apply_chat_template(..., tokenize=True, sanitize_control_tokens=True)` (transformers 5.25; the config's
empty `chat_control_tokens` keeps the R1 tags that r1_zero's text names ordinary added tokens there). Both
hold for bpe only: a Unigram model's vocabulary holds the control pieces, so it still yields their ids from
the text (and sanitize_control_tokens refuses it).
The sentencepiece proto is read with the message classes sentencepiece ships (`sentencepiece_model_pb2`).
"""

from __future__ import annotations

import json
import pathlib

from sentencepiece import sentencepiece_model_pb2
from tokenizers import Tokenizer as RustTokenizer

from r1jax.errors import UserError
from r1jax.model.tokenizer import BOS_ID, TEMPLATE_NAMES, TEMPLATES, Tokenizer, TokenizerLike
from r1jax.model.tokenizer_json import CHAT_TEMPLATE_FILE, CONFIG_JSON, SENTENCEPIECE_MODEL, HFTokenizer

_META, _ESC = "\u2581", "\U000f0000"  # as model.tokenizer


# ------------------------------------------------------------------------------------ sentencepiece proto


def read_model_proto(proto: bytes) -> tuple[str, list[tuple[str, float, str]]]:
    """(model type, [(piece, score, kind)] in id order) of a serialized sentencepiece ModelProto.

    Model type and kinds are the proto's enum names in lower case ("bpe", "unigram"; "normal", "control", ...).
    """
    model = sentencepiece_model_pb2.ModelProto.FromString(proto)
    model_type = sentencepiece_model_pb2.TrainerSpec.ModelType.Name(model.trainer_spec.model_type).lower()
    kind = sentencepiece_model_pb2.ModelProto.SentencePiece.Type.Name
    return model_type, [(p.piece, p.score, kind(p.type).lower()) for p in model.pieces]


# ------------------------------------------------------------------------------------------ tokenizer.json


def _bpe_merges(pieces: list[tuple[str, float, str]]) -> list[list[str]]:
    """Merges in priority order: every split of a normal piece into two pieces, by the merged piece's score."""
    vocab = {piece: i for i, (piece, _, _) in enumerate(pieces)}
    merges = []
    for piece, score, kind in pieces:
        if kind != "normal":
            continue
        splits = [(piece[:k], piece[k:]) for k in range(1, len(piece)) if piece[:k] in vocab and piece[k:] in vocab]
        merges += [(score, vocab[a], vocab[b], a, b) for a, b in splits]
    merges.sort(key=lambda m: (-m[0], m[1], m[2]))
    return [[a, b] for _, _, _, a, b in merges]


def _replace(old: str, new: str) -> dict:
    return {"type": "Replace", "pattern": {"String": old}, "content": new}


def _bos_first(pieces: list[tuple[str, float, str]]) -> dict:
    """A post-processor putting bos (r1jax's BOS_ID) before a sequence (and before the second of a pair)."""
    bos = pieces[BOS_ID][0]

    def sequence(name: str, type_id: int) -> list[dict]:
        return [{"SpecialToken": {"id": bos, "type_id": type_id}}, {"Sequence": {"id": name, "type_id": type_id}}]

    return {"type": "TemplateProcessing", "single": sequence("A", 0), "pair": sequence("A", 0) + sequence("B", 1),
            "special_tokens": {bos: {"id": bos, "ids": [BOS_ID], "tokens": [bos]}}}


def tokenizer_json(model_proto: bytes) -> dict:
    """The `tokenizers` serialisation of a sentencepiece model (see the module docstring)."""
    model_type, pieces = read_model_proto(model_proto)
    unk_id = next((i for i, (_, _, kind) in enumerate(pieces) if kind == "unknown"), 0)
    if model_type == "bpe":
        model = {"type": "BPE", "dropout": None, "unk_token": pieces[unk_id][0], "continuing_subword_prefix": None,
                 "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                 "vocab": {piece: i for i, (piece, _, _) in enumerate(pieces)}, "merges": _bpe_merges(pieces)}
    elif model_type == "unigram":
        model = {"type": "Unigram", "unk_id": unk_id, "byte_fallback": True,
                 "vocab": [[piece, score] for piece, score, _ in pieces]}
    else:
        raise UserError(f"tokenizer model type {model_type!r}: only bpe and unigram convert to Hugging Face")
    added = [{"id": i, "content": piece, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": kind != "user_defined"}
             for i, (piece, _, kind) in enumerate(pieces) if kind in ("unknown", "control", "user_defined")]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        # r1jax escapes U+F0000 and U+2581 before sentencepiece, which spells a space U+2581.
        "normalizer": {"type": "Sequence", "normalizers": [_replace(_ESC, _ESC + _ESC), _replace(_META, _ESC + "_"),
                                                           _replace(" ", _META)]},
        "pre_tokenizer": None, "post_processor": _bos_first(pieces),
        "decoder": {"type": "Sequence", "decoders": [
            _replace(_META, " "), {"type": "ByteFallback"}, {"type": "Fuse"},
            _replace(_ESC + "_", _META), _replace(_ESC + _ESC, _ESC)]},
        "model": model,
    }


def written_from(model_proto: bytes, tokenizer_json_text: str) -> bool:
    """Whether `tokenizer_json_text` is `tokenizer_json(model_proto)`, compared as `tokenizers` serialises both
    (so a copy that transformers saved again still is; one with a token added, or another model's, is not)."""
    try:
        ours = RustTokenizer.from_str(json.dumps(tokenizer_json(model_proto))).to_str()
        return RustTokenizer.from_str(tokenizer_json_text).to_str() == ours
    except Exception:  # not a model proto (protobuf's DecodeError), a model type without a form, a bad file
        return False


# ---------------------------------------------------------------------------------------- config + files


_ASSISTANT = "Assistant:"  # the assistant header r1jax's prompt texts end with: the generation prompt


def chat_template(template: str, start: str | None = None) -> str:
    """A Jinja chat template for r1jax's prompt format `template`: `start` (default: the bos_token), then each
    user turn as r1jax's `apply_template(template, content)` without its closing assistant header, each assistant
    turn as that header, a space, the content and eos; the header again when `add_generation_prompt` is true. So
    one user turn with the generation prompt is r1jax's prompt text. The formats have no system turn: any role
    other than user and assistant raises an error naming it (transformers' `raise_exception`)."""
    if template not in TEMPLATE_NAMES:
        raise UserError(f"unknown template {template!r}: expected one of {list(TEMPLATE_NAMES)}")
    prefix, suffix = TEMPLATES.get(template, "{prompt}").split("{prompt}")  # "none": the prompt as is
    header = _ASSISTANT if suffix.endswith(_ASSISTANT) else ""
    close = suffix[:len(suffix) - len(header)]
    unsupported = json.dumps(f" is not supported by r1jax's {template} prompt format (user and assistant turns only)")
    opening = "{{- bos_token -}}" if start is None else f"{{{{- {json.dumps(start)} -}}}}" if start else ""
    return (opening +
            "{%- for message in messages -%}"
            "{%- if message['role'] == 'user' -%}"
            f"{{{{ {json.dumps(prefix)} + message['content'] + {json.dumps(close)} }}}}"
            "{%- elif message['role'] == 'assistant' -%}"
            f"{{{{ {json.dumps(header + ' ')} + message['content'] + eos_token }}}}"
            "{%- else -%}"
            f"{{{{ raise_exception('role ' ~ message['role'] ~ {unsupported}) }}}}"
            "{%- endif -%}"
            "{%- endfor -%}"
            f"{{%- if add_generation_prompt -%}}{{{{ {json.dumps(header)} }}}}{{%- endif -%}}")


def save_hf_tokenizer(tok: Tokenizer, out_dir: str | pathlib.Path, template: str = "r1_zero",
                      model_max_length: int | None = None) -> list[pathlib.Path]:
    """Write the tokenizer files into `out_dir`; returns their paths."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = tokenizer_json(tok.model_proto)
    names = {t["id"]: t["content"] for t in data["added_tokens"]}
    special = {"bos_token": names[tok.bos_id], "eos_token": names[tok.eos_id], "unk_token": names[tok.unk_id],
               "pad_token": names[tok.pad_id]}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast", **special, "add_bos_token": True,
        "add_eos_token": False, "clean_up_tokenization_spaces": False, "chat_template": chat_template(template),
        "chat_control_tokens": [],  # sanitize_control_tokens: the special tokens only (module docstring)
        "added_tokens_decoder": {str(t["id"]): {k: v for k, v in t.items() if k != "id"}
                                 for t in data["added_tokens"]},
    }
    if model_max_length:
        config["model_max_length"] = model_max_length
    files = {"tokenizer.json": data, "tokenizer_config.json": config, "special_tokens_map.json": special}
    for name, content in files.items():
        (out / name).write_text(json.dumps(content, ensure_ascii=False, indent=1) + "\n")
    (out / SENTENCEPIECE_MODEL).write_bytes(tok.model_proto)
    return [out / name for name in (*files, SENTENCEPIECE_MODEL)]


def save_with_prompt_format(tok: HFTokenizer, out_dir: str | pathlib.Path, template: str) -> None:
    """A Hugging Face tokenizer's files in `out_dir` with a chat template that renders r1jax's prompt format
    `template` (`chat_template`, opening with what the tokenizer's post-processor puts before a sequence) in
    place of its own: tokenizer_config.json's `chat_template` replaced, chat_template.jinja (which transformers
    would prefer) left out, every other file byte for byte. transformers' `apply_chat_template([user turn],
    add_generation_prompt=True)` then gives r1jax's `render_prompt(tok, template, ...)` ids."""
    out = pathlib.Path(out_dir)
    tok.save(out)
    (out / CHAT_TEMPLATE_FILE).unlink(missing_ok=True)
    config = {**tok.config, "chat_template": chat_template(template, tok.start_text)}
    (out / CONFIG_JSON).write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def token_ids(tok: TokenizerLike) -> dict[str, int | list[int] | None]:
    """The special ids for config.json / generation_config.json, of either tokenizer back end: eos_token_id
    is a list when several ids stop generation (as Qwen3's and R1's generation_config.json write it); a Hugging
    Face tokenizer's bos_token_id is the one its configs name (`HFTokenizer.model_bos_id`: Qwen's names one
    though its tokenizer has no bos token)."""
    eos = tok.eos_ids[0] if len(tok.eos_ids) == 1 else list(tok.eos_ids)
    bos = tok.model_bos_id if isinstance(tok, HFTokenizer) else tok.bos_id
    return {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": tok.pad_id}
