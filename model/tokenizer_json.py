"""The Hugging Face tokenizer back end: a checkpoint's `tokenizer.json`, run by the `tokenizers` library.

`tokenizers` is the Rust library transformers' fast tokenizers run on, so ids and text agree with
`transformers.AutoTokenizer` on the same files. Conventions (transformers v5's, where it has one):
- `encode(text)` is `AutoTokenizer(text, add_special_tokens=False)`: added tokens written in the text
  (<|im_end|>, <think>) are single tokens. `encode(text, add_bos=True)` puts first what the tokenizer's
  post-processor puts before a sequence (DeepSeek's bos; nothing for Qwen, whose tokenizer has no bos), and
  not again when the text already starts with it; the post-processor's suffix (an eos) is never added.
  transformers reads the same post-processor (it ignores tokenizer_config's add_bos_token when a
  tokenizer.json exists).
- `decode(ids)` drops special tokens (as sentencepiece drops control ids; vLLM's default); <think> and
  </think> are added tokens that are not special in Qwen3's and R1's files, so they stay in the text.
  Ids outside the vocabulary decode to nothing.
- Named special tokens come from tokenizer_config.json (a string or an AddedToken dict); when the config has
  no `added_tokens_decoder` (an old file), special_tokens_map.json's values win, as in transformers.
- `eos_ids`: tokenizer_config's eos_token first, then every id of generation_config.json's `eos_token_id`
  (an int or a list); every one of them stops a row. `pad_id`: the pad_token, else generation_config's
  `pad_token_id`, else the first eos id (rows are padded only after they stopped). `model_bos_id`: the bos the
  model's configs name (the bos token's, else generation_config's `bos_token_id`: Qwen's names one though its
  tokenizer has none), never added by `encode`.
- A directory without generation_config.json whose config.json names token ids gets the generation config
  transformers makes then (`GenerationConfig.from_model_config`: config.json's bos/eos/pad_token_id, which
  `save_pretrained` writes as generation_config.json), so its eos list stops rows as in transformers.
- The chat template is chat_template.jinja when present, else tokenizer_config.json's `chat_template` (a
  string, or a list of {name, template} of which "default" is used), as transformers chooses.
- The files are kept byte for byte (`FILES`), so `save(dir)` writes back exactly what was loaded. A
  sentencepiece `tokenizer.model` beside tokenizer.json (as Llama-style repositories and r1jax's `export-hf`
  ship one) is carried as one of them but never read here: tokenizer.json is the tokenizer, as in
  transformers' fast tokenizers, and equality ignores the passenger. The GGUF export reads it
  (`rl.gguf_export.vocab`) when it is the model the tokenizer.json was written from.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Mapping, Optional, Sequence

from tokenizers import Tokenizer as RustTokenizer

from r1jax.errors import UserError
from r1jax.files import write_atomically
from r1jax.model.chat_template import ChatTemplate

TOKENIZER_JSON = "tokenizer.json"
CONFIG_JSON = "tokenizer_config.json"
SPECIAL_TOKENS_JSON = "special_tokens_map.json"
GENERATION_JSON = "generation_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
SENTENCEPIECE_MODEL = "tokenizer.model"  # a sentencepiece model: r1jax's own tokenizer file (model.tokenizer)
FILES = (TOKENIZER_JSON, CONFIG_JSON, SPECIAL_TOKENS_JSON, GENERATION_JSON, CHAT_TEMPLATE_FILE, SENTENCEPIECE_MODEL)
MODEL_CONFIG_JSON = "config.json"  # the model's; read only for a directory without generation_config.json
_GENERATION_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")  # what r1jax reads of a generation config
# transformers' SPECIAL_TOKENS_ATTRIBUTES: the special tokens a chat template sees by name
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_PROBE = "a"  # a text every byte-level or byte-fallback vocabulary encodes to at least one id


def _token_text(value: Any, where: str) -> Optional[str]:
    """A special token as tokenizer_config writes it: a string, an AddedToken dict, or null. Anything else (an
    id such as `"eos_token": 151645`) is a UserError naming `where` (the file and key): it was left out, and the
    token stayed the one the other files name."""
    text = value.get("content") if isinstance(value, Mapping) else value
    if value is not None and not isinstance(text, str):
        raise UserError(f"{where} = {value!r}: expected the token's text (a string such as \"<|im_end|>\", or "
                        "an AddedToken object with its \"content\"), or null")
    return text


def _clean_up_tokenization(text: str) -> str:
    """transformers' clean_up_tokenization (spaces before punctuation and English contractions)."""
    for old, new in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                     (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(old, new)
    return text


def _generation_from_model_config(path: pathlib.Path) -> Optional[bytes]:
    """generation_config.json as transformers makes it for a directory that has none (module docstring): the
    token ids config.json names, or None when it names none."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(config).__name__}")
    ids = {name: config[name] for name in _GENERATION_IDS if config.get(name) is not None}
    return (json.dumps(ids, indent=2) + "\n").encode("utf-8") if ids else None


class HFTokenizer:
    """A Hugging Face tokenizer directory's files, loaded (module docstring for the conventions)."""

    def __init__(self, files: Mapping[str, bytes], origin: str = "<memory>"):
        if TOKENIZER_JSON not in files:
            raise UserError(f"{origin}: no {TOKENIZER_JSON}")
        self.files = {name: bytes(files[name]) for name in FILES if name in files}
        self.origin = origin  # the directory, named in errors
        try:
            self._tok = RustTokenizer.from_str(self.files[TOKENIZER_JSON].decode("utf-8"))
        except Exception as err:  # tokenizers raises a bare Exception for a malformed file
            raise UserError(f"{self._where(TOKENIZER_JSON)} is not a tokenizers file: {err}") from None
        # as transformers encodes: never truncated or padded unless asked (r1jax never asks), and special
        # tokens written in the text are single tokens unless the config sets split_special_tokens
        self._tok.no_truncation()
        self._tok.no_padding()
        self._vocab_size = max(self._tok.get_vocab(with_added_tokens=True).values(), default=-1) + 1
        self.config = self._json(CONFIG_JSON)
        self._tok.encode_special_tokens = bool(self.config.get("split_special_tokens", False))
        generation = self._json(GENERATION_JSON)
        self.special_tokens = self._special_tokens()
        self.bos_id = self._special_id("bos_token")
        self.model_bos_id = self.bos_id if self.bos_id is not None else self._token_id_or_none(
            generation.get("bos_token_id"))  # only named in configs: a value that is no id is left out
        self.eos_ids = self._eos_ids(generation)
        pad = self._special_id("pad_token")
        pad = generation.get("pad_token_id") if pad is None else pad
        self.pad_id = self._check_id(pad, f"{self._where(GENERATION_JSON)} pad_token_id") if pad is not None \
            else self.eos_ids[0]
        self._prefix = self._sequence_prefix()
        # transformers registers the config's named tokens (eos, pad, ...) as special whatever tokenizer.json
        # says, so its decode skips them: so does this one's
        self._named_special = frozenset(self._tok.token_to_id(text) for text in self.special_tokens.values())
        # transformers skips the clean-up for BPE models (it would delete real spaces before punctuation)
        self._clean_up = bool(self.config.get("clean_up_tokenization_spaces", False)) and \
            type(self._tok.model).__name__ != "BPE"
        self._undefaulted: list[str] = []  # named chat templates of which none is 'default'
        self.chat_template = self._chat_template()

    # --------------------------------------------------------------------------------------------- loading

    def _where(self, name: str) -> str:
        return str(pathlib.Path(self.origin) / name)

    def _json(self, name: str) -> dict:
        if name not in self.files:
            return {}
        try:
            content = json.loads(self.files[name].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UserError(f"{self._where(name)} is not valid JSON: {err}") from None
        if not isinstance(content, dict):
            raise UserError(f"{self._where(name)}: expected a JSON object, got {type(content).__name__}")
        return content

    def _special_tokens(self) -> dict[str, str]:
        values = {name: (CONFIG_JSON, self.config.get(name)) for name in SPECIAL_TOKEN_NAMES}
        special = self._json(SPECIAL_TOKENS_JSON)  # read also where unused: export-hf ships it, transformers reads it
        if "added_tokens_decoder" not in self.config:  # an old config: special_tokens_map.json wins
            values.update({k: (SPECIAL_TOKENS_JSON, v) for k, v in special.items() if k in values})
        return {name: text for name, (file, value) in values.items()
                if (text := _token_text(value, f"{self._where(file)}: {name}")) is not None}

    def _special_id(self, name: str) -> Optional[int]:
        text = self.special_tokens.get(name)
        if text is None:
            return None
        token_id = self._tok.token_to_id(text)
        if token_id is None:
            raise UserError(f"{self._where(CONFIG_JSON)}: {name} {text!r} is not a token of "
                            f"{self._where(TOKENIZER_JSON)}")
        return token_id

    def _check_id(self, value: Any, what: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < self.vocab_size:
            raise UserError(f"{what} = {value!r}: expected a token id in [0, {self.vocab_size})")
        return value

    def _token_id_or_none(self, value: Any) -> Optional[int]:
        valid = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < self.vocab_size
        return value if valid else None

    def _eos_ids(self, generation: dict) -> tuple[int, ...]:
        ids = [] if (eos := self._special_id("eos_token")) is None else [eos]
        listed = generation.get("eos_token_id")
        listed = [] if listed is None else listed if isinstance(listed, list) else [listed]
        for value in listed:
            value = self._check_id(value, f"{self._where(GENERATION_JSON)} eos_token_id")
            if value not in ids:
                ids.append(value)
        if not ids:
            raise UserError(f"{self.origin}: no eos token ({CONFIG_JSON} names no eos_token and {GENERATION_JSON} "
                            "has no eos_token_id); rows could never stop")
        return tuple(ids)

    def _sequence_prefix(self) -> list[int]:
        """The ids the post-processor puts before a single sequence (e.g. [bos]), found by encoding a probe."""
        plain = self._tok.encode(_PROBE, add_special_tokens=False).ids
        full = self._tok.encode(_PROBE, add_special_tokens=True).ids
        for start in range(len(full) - len(plain) + 1):
            if full[start:start + len(plain)] == plain:
                return full[:start]
        return []

    def _chat_template(self) -> Optional[ChatTemplate]:
        if CHAT_TEMPLATE_FILE in self.files:
            try:
                source = self.files[CHAT_TEMPLATE_FILE].decode("utf-8")
            except UnicodeDecodeError as err:
                raise UserError(f"{self._where(CHAT_TEMPLATE_FILE)} is not UTF-8 text: {err}") from None
            return ChatTemplate(source, self._where(CHAT_TEMPLATE_FILE), self.special_tokens)
        source = self.config.get("chat_template")
        origin = f"{self._where(CONFIG_JSON)}'s chat_template"
        if isinstance(source, list):  # named templates: [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in source if isinstance(t, Mapping)}
            source, origin = named.get("default"), f"{origin} named 'default'"
            self._undefaulted = [str(name) for name in named] if source is None else []
        if source is None:
            return None
        if not isinstance(source, str):
            raise UserError(f"{origin}: expected a Jinja template string, got {type(source).__name__}")
        return ChatTemplate(source, origin, self.special_tokens)

    @classmethod
    def load(cls, directory: str | pathlib.Path) -> "HFTokenizer":
        directory = pathlib.Path(directory)
        if not (directory / TOKENIZER_JSON).exists():
            raise UserError(f"tokenizer directory {str(directory)!r} has no {TOKENIZER_JSON}")
        odd = [name for name in FILES if (directory / name).exists() and not (directory / name).is_file()]
        if odd:  # a directory named like one: skipped, the tokenizer went without it (or without a tokenizer)
            raise UserError(f"tokenizer directory {str(directory)!r}: {odd[0]} is not a file")
        files = {name: (directory / name).read_bytes() for name in FILES if (directory / name).is_file()}
        if GENERATION_JSON not in files and (directory / MODEL_CONFIG_JSON).is_file():
            generation = _generation_from_model_config(directory / MODEL_CONFIG_JSON)
            if generation is not None:
                files[GENERATION_JSON] = generation
        return cls(files, str(directory))

    def save(self, directory: str | pathlib.Path) -> pathlib.Path:
        """Write the loaded files unchanged into `directory`; returns the path of tokenizer.json."""
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, content in self.files.items():  # rewritten beside every checkpoint: never left half-written
            write_atomically(directory / name, content)
        return directory / TOKENIZER_JSON

    # ---------------------------------------------------------------------------------------------- use

    @property
    def vocab_size(self) -> int:
        """One past the largest id (added tokens included): the rows the model's embedding needs."""
        return self._vocab_size

    @property
    def eos_id(self) -> int:
        return self.eos_ids[0]

    @property
    def start_text(self) -> str:
        """The text of what the post-processor puts before a sequence (DeepSeek's bos; "" for Qwen): a chat
        template that writes it first gives the ids `encode(text, add_bos=True)` gives."""
        return "".join(self._tok.id_to_token(i) for i in self._prefix)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if add_bos and self._prefix and ids[:len(self._prefix)] != self._prefix:
            ids = self._prefix + ids
        return ids + [self.eos_id] if add_eos else ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._named_special]
        text = self._tok.decode(ids, skip_special_tokens=skip_special_tokens)
        return _clean_up_tokenization(text) if self._clean_up else text

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], /, add_generation_prompt: bool = False,
                            **variables: Any) -> str:
        """The chat template's text for `messages` (as `AutoTokenizer.apply_chat_template(..., tokenize=False)`);
        its ids are `encode(text)`. No chat template is a UserError naming the files looked in."""
        if self.chat_template is None and self._undefaulted:
            raise UserError(f"{self._where(CONFIG_JSON)}'s chat_template is a list of named templates "
                            f"({', '.join(map(repr, self._undefaulted))}) without one named 'default', the one "
                            "used (as transformers uses it): name the one to use 'default', or use the prompt format "
                            "r1_zero or none (tokenizer.template, or --template on generate and eval)")
        if self.chat_template is None:
            raise UserError(f"{self.origin} has no chat template (neither {CHAT_TEMPLATE_FILE} nor a chat_template "
                            f"in {CONFIG_JSON}); use the prompt format r1_zero or none (tokenizer.template, or "
                            f"--template on generate and eval)")
        return self.chat_template.render(messages, add_generation_prompt=add_generation_prompt, **variables)

    def _defining_files(self) -> dict[str, bytes]:
        """The files that make the tokenizer (all but a carried tokenizer.model: module docstring)."""
        return {name: content for name, content in self.files.items() if name != SENTENCEPIECE_MODEL}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HFTokenizer) and self._defining_files() == other._defining_files()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._defining_files().items())))
