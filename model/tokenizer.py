"""The policy's tokenizer: a sentencepiece model trained by r1jax, with R1's tags as single pieces.

Conventions:
- Ids 0-3 are <unk>, <s> (bos), </s> (eos), <pad>; then the tags <think> </think> <answer> </answer>
  (user-defined pieces: always one token wherever they appear in text); then 256 byte pieces (byte
  fallback, so no text is unrepresentable); then learned pieces. Text never encodes to bos/eos/pad: the
  string "<s>" is ordinary characters.
- encode -> decode is the identity on every valid Unicode string. Normalisation is off (identity rule, no
  dummy prefix, whitespace kept). sentencepiece spells a space as U+2581 and decodes U+2581 as a space, so
  that one character is escaped on the way in and restored on the way out (see `_escape`).
- `vocab_size` is the real number of pieces, which can be below the requested size on a small corpus
  (hard_vocab_limit off); the model's embedding needs at least that many rows.
- A tokenizer is one file, `tokenizer.model` (the serialized sentencepiece proto), so a checkpoint can
  carry it: `tok.save(dir)` / `Tokenizer.load(dir)`.

Both back ends (this one and `HFTokenizer`, a checkpoint's tokenizer.json) offer `TokenizerLike`;
`load_tokenizer(dir)` picks one by the files present (a directory with both tokenizer.json and tokenizer.model,
as a Llama-style Hugging Face repository or r1jax's own `export-hf` ships, is read from tokenizer.json, as
transformers' fast tokenizers read it: the sentencepiece file travels with it, unread), and `render_prompt`
gives a problem's prompt ids in a run's prompt format (`TEMPLATE_NAMES`).
"""

from __future__ import annotations

import codecs
import collections
import dataclasses
import io
import pathlib
import re
from typing import Any, Iterable, Mapping, Optional, Protocol, Sequence

from r1jax.errors import UserError
from r1jax.files import not_utf8, write_atomically
from r1jax.model.chat_template import RESERVED_VARIABLES
from r1jax.model.tokenizer_json import CONFIG_JSON, SENTENCEPIECE_MODEL, TOKENIZER_JSON, HFTokenizer

THINK, END_THINK, ANSWER, END_ANSWER = "<think>", "</think>", "<answer>", "</answer>"
TAGS = (THINK, END_THINK, ANSWER, END_ANSWER)
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3
NUM_BYTES = 256
MIN_LEARNED_CHARS = 8  # a vocabulary needs a few plain characters besides the byte pieces
MIN_VOCAB = 4 + len(TAGS) + NUM_BYTES + MIN_LEARNED_CHARS
INT32_MAX = 2**31 - 1
FILE_NAME = SENTENCEPIECE_MODEL  # "tokenizer.model"
MODEL_TYPES = ("bpe", "unigram")

R1_ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The "
    "assistant first thinks about the reasoning process in the mind and then provides the user with the "
    "answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
    "tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. "
    "User: {prompt}. Assistant:"
)
CHAT_TEMPLATE = "User: {prompt}\nAssistant:"  # "chat" for this tokenizer; an HF one uses its own template
TEMPLATES = {"r1_zero": R1_ZERO_TEMPLATE, "chat": CHAT_TEMPLATE}  # r1jax's prompt texts (corpora start with them)
# Prompt formats: r1_zero (for base models), chat (the checkpoint's own chat template, for instruct and
# distilled models), none (the prompt as is).
TEMPLATE_NAMES = ("r1_zero", "chat", "none")

_META = "\u2581"  # sentencepiece's whitespace symbol
_ESC = "\U000f0000"  # a private-use character; escapes _META and itself
_UNESCAPE = re.compile(f"{_ESC}([{_ESC}_])")


def _escape(text: str) -> str:
    return text.replace(_ESC, _ESC + _ESC).replace(_META, _ESC + "_")


def _unescape(text: str) -> str:
    return _UNESCAPE.sub(lambda m: _ESC if m.group(1) == _ESC else _META, text)


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    vocab_size: int = 512  # requested pieces; at least MIN_VOCAB (byte fallback needs 256 of them)
    model_type: str = "bpe"  # sentencepiece algorithm: "bpe" | "unigram"
    template: str = "r1_zero"  # prompt format: "r1_zero" (R1-Zero paper, Table 1) | "chat" | "none"
    # variables the chat template reads besides messages, e.g. {enable_thinking: false} (Qwen3); template chat
    # only (refused beside another, and beside r1jax's own tokenizer when a prompt is rendered: `prompt_text`)
    template_vars: dict[str, Any] = dataclasses.field(default_factory=dict)
    # a directory holding tokenizer.json (Hugging Face) or tokenizer.model (r1jax); None: the tokenizer the
    # first stage's init_from carries (an HF directory's, an r1jax checkpoint's saved one), else one trained
    path: Optional[str] = None

    def __post_init__(self) -> None:
        if not MIN_VOCAB <= self.vocab_size <= INT32_MAX:  # sentencepiece reads an int32
            raise UserError(f"tokenizer.vocab_size = {self.vocab_size}: must be >= {MIN_VOCAB} (4 control "
                            f"pieces + {len(TAGS)} tags + {NUM_BYTES} byte-fallback pieces + "
                            f"{MIN_LEARNED_CHARS} characters) and <= 2^31-1")
        if self.model_type not in MODEL_TYPES:
            raise UserError(f"tokenizer.model_type = {self.model_type!r}: expected one of {MODEL_TYPES}")
        if self.template not in TEMPLATE_NAMES:
            raise UserError(f"tokenizer.template = {self.template!r}: expected one of {list(TEMPLATE_NAMES)}")
        if self.template_vars and self.template != "chat":  # were ignored without a word
            raise UserError(f"tokenizer.template_vars {list(self.template_vars)}: only a chat template reads them "
                            f"(tokenizer.template=chat with a Hugging Face tokenizer), and tokenizer.template is "
                            f"{self.template!r}, which reads none; remove them, or set tokenizer.template=chat")
        reserved = [name for name in RESERVED_VARIABLES if name in self.template_vars]
        if reserved:
            raise UserError(f"tokenizer.template_vars.{reserved[0]}: r1jax sets {reserved[0]!r} itself when it "
                            f"renders a chat template (the names {list(RESERVED_VARIABLES)} are reserved); remove it")


def apply_template(template: str, prompt: str) -> str:
    """r1jax's prompt text, e.g. apply_template("r1_zero", "Compute 3+4"); "none" is the prompt itself.

    "chat" here is r1jax's own "User: ...\nAssistant:"; `prompt_text` uses an HF tokenizer's chat template."""
    if template not in TEMPLATE_NAMES:
        raise UserError(f"unknown template {template!r}: expected one of {list(TEMPLATE_NAMES)}")
    return TEMPLATES.get(template, "{prompt}").replace("{prompt}", prompt)  # not str.format: prompts hold braces


class TokenizerLike(Protocol):
    """What the trainer, sampler and CLI use of a tokenizer; `Tokenizer` and `HFTokenizer` both offer it.

    eos_ids: every id that stops a row (eos_id is the first: the one a completion is closed with);
    pad_id: fills rows after they stopped; bos_id: None when the tokenizer has none;
    encode(text, add_bos=True): text as a sequence start (bos only where the tokenizer puts one, never twice);
    decode(ids): text without control / special tokens; save(dir): the files `load_tokenizer(dir)` reads.
    """

    @property
    def vocab_size(self) -> int: ...

    @property
    def bos_id(self) -> Optional[int]: ...

    @property
    def eos_id(self) -> int: ...

    @property
    def eos_ids(self) -> tuple[int, ...]: ...

    @property
    def pad_id(self) -> int: ...

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def save(self, directory: str | pathlib.Path) -> pathlib.Path: ...


class Tokenizer:
    """A loaded sentencepiece model with r1jax's ids and the escaping that makes decode(encode(s)) == s."""

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self.model_proto = bytes(model_proto)
        if not self.model_proto:  # protobuf parses it as a model with no pieces: a misleading "lacks ['<think>', ...]",
            # after sentencepiece logged "Model is not initialized" to stderr for each piece looked up
            raise UserError("an empty file (0 bytes), not a sentencepiece model")
        self._sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
        missing = [t for t in TAGS if self._sp.piece_to_id(t) == UNK_ID]
        if missing or self._sp.bos_id() != BOS_ID or self._sp.pad_id() != PAD_ID:
            raise UserError(f"a sentencepiece model but not an r1jax tokenizer (it lacks "
                            f"{missing or 'r1jax bos/pad ids'})")

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    unk_id, bos_id, eos_id, pad_id = UNK_ID, BOS_ID, EOS_ID, PAD_ID
    eos_ids = (EOS_ID,)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = self._sp.encode(_escape(text))
        return ([BOS_ID] if add_bos else []) + ids + ([EOS_ID] if add_eos else [])

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; control ids (bos, eos, pad) decode to nothing, invalid byte runs to U+FFFD."""
        return _unescape(self._sp.decode([int(i) for i in ids]))

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(int(token_id))

    def save(self, directory: str | pathlib.Path) -> pathlib.Path:
        path = pathlib.Path(directory) / FILE_NAME
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, self.model_proto)  # rewritten beside every checkpoint: a kill keeps the old one
        except OSError as err:  # a parent that is a file, a read-only or missing mount, a full disk
            raise UserError(f"tokenizer {str(path)!r} cannot be written: {err.strerror or err}"
                            f"{f' ({err.filename!r})' if err.filename else ''}") from None
        return path

    @classmethod
    def load(cls, directory: str | pathlib.Path) -> "Tokenizer":
        path = pathlib.Path(directory)
        path = path / FILE_NAME if path.is_dir() else path
        if not path.is_file():
            raise UserError(f"tokenizer file {str(path)!r} does not exist")
        try:
            return cls(path.read_bytes())
        except RuntimeError as err:  # sentencepiece's error for a file that is not a model proto
            raise UserError(f"tokenizer file {str(path)!r} is not a sentencepiece model: {err}") from err
        except UserError as err:  # a sentencepiece model of another project, e.g. a Hugging Face checkpoint's
            raise UserError(f"tokenizer file {str(path)!r} is {err}; {_foreign_sentencepiece_advice(path.parent)}") \
                from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.model_proto == other.model_proto

    def __hash__(self) -> int:
        return hash(self.model_proto)


def _foreign_sentencepiece_advice(directory: pathlib.Path) -> str:
    """What to do with a tokenizer.model r1jax did not train: in a Hugging Face directory (config.json or
    tokenizer_config.json beside it), get its tokenizer.json; elsewhere, train an r1jax tokenizer."""
    if not ((directory / "config.json").is_file() or (directory / CONFIG_JSON).is_file()):
        return (f"train one with `r1jax tokenizer train`, or set tokenizer.path to a directory holding a Hugging Face "
                f"{TOKENIZER_JSON}")
    return (f"r1jax reads a Hugging Face checkpoint's tokenizer from {TOKENIZER_JSON} only, not a sentencepiece "
            f"{FILE_NAME}: write it beside the model with transformers, `AutoTokenizer.from_pretrained("
            f"{str(directory)!r}).save_pretrained({str(directory)!r})` (a fast tokenizer saves {TOKENIZER_JSON}), or "
            f"set tokenizer.path to a directory holding the checkpoint's {TOKENIZER_JSON}")


def is_tokenizer_dir(path: str | pathlib.Path) -> bool:
    """Whether `path` is a directory holding a tokenizer `load_tokenizer` can read."""
    path = pathlib.Path(path)  # one that exists but is no file is one load_tokenizer names (import-hf skipped it)
    return (path / TOKENIZER_JSON).exists() or (path / FILE_NAME).is_file()


def load_tokenizer(path: str | pathlib.Path) -> TokenizerLike:
    """The tokenizer in directory `path`: tokenizer.json -> HFTokenizer (checked first, as transformers prefers
    it), else tokenizer.model -> r1jax's sentencepiece Tokenizer. `path` may also name either file."""
    path = pathlib.Path(path)
    if path.is_file():
        return HFTokenizer.load(path.parent) if path.name == TOKENIZER_JSON else Tokenizer.load(path)
    if (path / TOKENIZER_JSON).exists():
        return HFTokenizer.load(path)
    if (path / FILE_NAME).is_file():
        return Tokenizer.load(path)
    what = "has neither" if path.is_dir() else "does not exist: expected a directory with either"
    joined = "nor" if path.is_dir() else "or"
    raise UserError(f"tokenizer directory {str(path)!r} {what} {TOKENIZER_JSON} (Hugging Face) {joined} {FILE_NAME} "
                    "(r1jax sentencepiece)")


def _uses_chat_template(tokenizer: TokenizerLike, template: str) -> bool:
    return template == "chat" and isinstance(tokenizer, HFTokenizer)


def check_template_vars(tokenizer: TokenizerLike, template: str, template_vars: Mapping[str, Any]) -> None:
    """UserError when `template_vars` are set beside "chat" on r1jax's own tokenizer, whose chat text reads none
    (beside "r1_zero" / "none" the config refuses them: `TokenizerConfig`); known only once the tokenizer is."""
    if template_vars and template == "chat" and not isinstance(tokenizer, HFTokenizer):
        raise UserError(f"tokenizer.template_vars {list(template_vars)}: only a Hugging Face tokenizer's chat "
                        f"template reads them; with r1jax's own tokenizer, tokenizer.template='chat' is the text "
                        f"{CHAT_TEMPLATE!r}, which reads none: remove them, or use a tokenizer with a chat template")


def prompt_text(tokenizer: TokenizerLike, template: str, prompt: str,
                template_vars: Optional[Mapping[str, Any]] = None) -> str:
    """The text a problem's prompt becomes in prompt format `template` (TEMPLATE_NAMES).

    "chat" with an HF tokenizer is its chat template on one user message with the generation prompt
    (`apply_chat_template(..., add_generation_prompt=True, **template_vars)`); with r1jax's own tokenizer it
    is `apply_template("chat", prompt)`. `template_vars` are read by chat templates only; r1jax's own formats
    ignore them (a run refuses them there before it starts: `TokenizerConfig`, `check_template_vars`; a checkpoint
    saved before 2026-12-06 may carry them, and generate / eval ignore them as they did)."""
    if _uses_chat_template(tokenizer, template):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             **dict(template_vars or {}))
        if not text:  # the policy would have nothing to condition on (and SFT no token to predict from)
            raise UserError(f"{tokenizer.chat_template.origin} rendered nothing for a user message (prompt "
                            f"{prompt[:60]!r}) with the generation prompt: a prompt needs at least one token")
        if prompt.strip() not in text:  # every problem would get one prompt: nothing to learn from (" " included)
            raise UserError(f"{tokenizer.chat_template.origin} rendered a user message without its text (prompt "
                            f"{prompt[:60]!r}, rendered {text[:60]!r}): every problem's prompt would be the same; "
                            "the template must write the message's content")
        return text
    return apply_template(template, prompt)


def opens_think(prompt_text: str) -> bool:
    """Whether a rendered prompt ends inside a chain of thought it opened itself (the chat templates of
    Qwen3's thinking models, the R1 distills and QwQ end in `<think>\\n`). The completion then continues
    the thought: the response it stands for, which the rewards read, is THINK + completion."""
    return prompt_text.rstrip().endswith(THINK)


def response_text(prompt_text: str, completion: str) -> str:
    """The model's whole turn after `prompt_text`: the completion, after the THINK its prompt opened."""
    return THINK + completion if opens_think(prompt_text) else completion


def completion_text(prompt_text: str, response: str) -> str:
    """What the model writes after `prompt_text` to give `response` (inverse of `response_text`): without
    the leading THINK when the prompt opened one. SFT targets are this."""
    stripped = response.lstrip()
    if opens_think(prompt_text) and stripped.startswith(THINK):
        return stripped[len(THINK):].lstrip()
    return response


def render_prompt(tokenizer: TokenizerLike, template: str, prompt: str,
                  template_vars: Optional[Mapping[str, Any]] = None) -> list[int]:
    """The prompt ids the policy is conditioned on: `prompt_text` encoded as a sequence start. A chat
    template writes its own special tokens (bos included), so its text is encoded as is, as transformers'
    `apply_chat_template(..., tokenize=True)` does; other formats get bos where the tokenizer puts one."""
    return encode_prompt(tokenizer, template, prompt_text(tokenizer, template, prompt, template_vars))


def encode_prompt(tokenizer: TokenizerLike, template: str, text: str) -> list[int]:
    """The ids of a prompt already rendered in format `template` (`prompt_text`), as `render_prompt` gives."""
    return tokenizer.encode(text, add_bos=not _uses_chat_template(tokenizer, template))


def read_text_lines(path: pathlib.Path) -> list[str]:
    """The lines of a UTF-8 text file (a byte-order mark some editors write first dropped); UserError naming the
    file and its first line that is not UTF-8 (read with errors="replace", it trained U+FFFD into a vocabulary).
    OSError as `read_bytes` raises it."""
    data = path.read_bytes()
    body = data.removeprefix(codecs.BOM_UTF8)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        line = body[: err.start].count(b"\n") + 1
        raise UserError(f"{path}: line {line}: not UTF-8 text ({err.reason}); save the file as UTF-8") from None
    return text.splitlines()


def _read_corpus(corpus: Iterable[str] | str | pathlib.Path, max_lines: int) -> list[str]:
    what = "tokenizer corpus"
    if isinstance(corpus, (str, pathlib.Path)):
        path = pathlib.Path(corpus)
        what = f"tokenizer corpus {str(path)!r}"
        if not path.is_file():
            raise UserError(f"{what} is not a file")
        try:
            corpus = read_text_lines(path)
        except OSError as err:
            raise UserError(f"{what} cannot be read: {err.strerror or err}") from err
    lines = []
    for number, text in enumerate(corpus, start=1):  # sentencepiece reads lines; newlines reach it as bytes
        if bad := not_utf8(text):  # a lone surrogate (JSON's "\ud800"): sentencepiece's binding cannot take it
            raise UserError(f"{what}: text {number} is not valid Unicode ({bad})")
        lines.extend(line for line in _escape(text).splitlines() if line.strip())
        if len(lines) >= max_lines:
            break
    if not lines:
        raise UserError(f"{what} is empty: it holds no line of text to learn pieces from")
    return lines[:max_lines]


def _keep_frequent_chars(lines: list[str], vocab_size: int) -> list[str]:
    """Drop the rarest characters from the training text so the required characters fit the vocabulary.

    sentencepiece insists that every kept character be a piece and refuses character_coverage < 0.98, so a
    small vocabulary over varied text would fail to train. Dropped characters still encode, as bytes.
    """
    counts = collections.Counter(char for line in lines for char in line)
    budget = vocab_size - (4 + len(TAGS) + NUM_BYTES) - 2  # -2: room for whitespace and a margin
    if len(counts) <= budget:
        return lines
    keep = {char for char, _ in counts.most_common(max(budget, 1))} | {" "}
    return ["".join(c for c in line if c in keep) for line in lines]


def train_tokenizer(corpus: Iterable[str] | str | pathlib.Path, vocab_size: int = 512,
                    model_type: str = "bpe", max_lines: int = 200_000) -> Tokenizer:
    """Train on strings (or the lines of a text file); deterministic for a given corpus and size."""
    import sentencepiece as spm

    TokenizerConfig(vocab_size=vocab_size, model_type=model_type)  # validates both
    lines = _keep_frequent_chars(_read_corpus(corpus, max_lines), vocab_size)
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buffer, vocab_size=vocab_size, model_type=model_type,
        byte_fallback=True, user_defined_symbols=list(TAGS), unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
        pad_id=PAD_ID, normalization_rule_name="identity", add_dummy_prefix=False,
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, split_digits=True,
        character_coverage=1.0, hard_vocab_limit=False, max_sentence_length=1 << 16, num_threads=1,
        minloglevel=2)
    return Tokenizer(buffer.getvalue())
