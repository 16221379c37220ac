"""Real Hugging Face tokenizer files, made in the test: a byte-level BPE `tokenizer.json` trained with the
`tokenizers` library, its `tokenizer_config.json` (special tokens, a Jinja chat template),
`special_tokens_map.json` and `generation_config.json` (two eos ids).

`write_hf_tokenizer(directory, style)` writes them and returns the directory, so a test can save them beside a
random transformers model. Two styles, after the checkpoints R1 starts from:
- "qwen": Qwen2/Qwen3's pre-tokenizer (split regex + byte level), no bos, <|im_start|> / <|im_end|> /
  <|endoftext|> special, <think> </think> added but not special, a Qwen3-like chat template (system turn,
  reasoning content, tools through `tojson`, `enable_thinking`), eos ids [<|im_end|>, <|endoftext|>];
- "deepseek": DeepSeek-V3/R1's special tokens written as AddedToken dicts, a post-processor that puts bos
  before every sequence, a chat template that writes `bos_token` itself and opens <think> (as R1's does).
Training is deterministic for a given corpus, and fast (a few hundred lines, a vocabulary of 600).
"""

from __future__ import annotations

import json
import pathlib

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

# Qwen2's split pattern (tokenizer.json of Qwen2/Qwen3)
QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")

QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
THINK_TAGS = ("<think>", "</think>")
DEEPSEEK_BOS, DEEPSEEK_EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
DEEPSEEK_SPECIAL = (DEEPSEEK_BOS, DEEPSEEK_EOS, "<｜User｜>", "<｜Assistant｜>")

QWEN_CHAT_TEMPLATE = """\
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\\n\\n' }}
    {%- endif %}
    {{- "# Tools\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- elif '</think>' in content %}
            {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index and (loop.last or reasoning_content) %}
            {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {{- '\\n<tool_call>\\n{"name": "' + tool_call.name + '", "arguments": ' + tool_call.arguments | tojson + '}\\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role != "system" %}
        {{- raise_exception('unknown role: ' + message.role) }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}
"""

DEEPSEEK_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ '<｜Assistant｜>' + message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}"
)

STYLES = ("qwen", "deepseek")


def corpus(lines: int = 300) -> list[str]:
    """Deterministic training text: arithmetic, English, code, and a little non-Latin script."""
    words = ("the quick brown fox jumps over lazy dog while reasoning about numbers and answers carefully "
             "because every step matters").split()
    text = []
    for i in range(lines):
        a, b = (i * 37) % 101, (i * 53) % 89
        sentence = " ".join(words[(i + k) % len(words)] for k in range(6 + i % 5))
        text.append(f"What is {a} + {b}? {sentence}. The answer is {a + b}.")
        if i % 3 == 0:
            text.append(f"def f_{i}(x):\n    return x * {a} - {b}  # {sentence}")
        if i % 10 == 0:
            text.append(f"数学の問題を解く。 Задача номер {i} — ответ: {a * b}")
    return text


def train_byte_level_bpe(special: tuple[str, ...], vocab_size: int = 600) -> Tokenizer:
    """A Qwen-like byte-level BPE (split regex, then bytes) with `special` as special added tokens."""
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False, fuse_unk=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[AddedToken(t, special=True, normalized=False) for t in special])
    tok.train_from_iterator(corpus(), trainer=trainer)
    return tok


def _added_token(content: str) -> dict:
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": True}


def _added_tokens_decoder(tok: Tokenizer) -> dict:
    return {str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
                     "single_word": t.single_word, "special": t.special}
            for i, t in sorted(tok.get_added_tokens_decoder().items())}


def _write_json(path: pathlib.Path, content: dict) -> None:
    path.write_text(json.dumps(content, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def write_hf_tokenizer(directory: str | pathlib.Path, style: str = "qwen", template_file: bool = False,
                       chat_template: str | None = None) -> pathlib.Path:
    """Write the tokenizer files of `style` into `directory` (created); returns it.

    template_file: write the chat template to chat_template.jinja instead of tokenizer_config.json.
    chat_template: a template to use instead of the style's ("" writes none).
    """
    if style not in STYLES:
        raise ValueError(f"style {style!r}: expected one of {STYLES}")
    out = pathlib.Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    if style == "qwen":
        tok = train_byte_level_bpe(QWEN_SPECIAL)
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TAGS])
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        ids = {t: tok.token_to_id(t) for t in (*QWEN_SPECIAL, *THINK_TAGS)}
        special = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
        config = {"add_bos_token": False, "add_prefix_space": False, "bos_token": None, **special,
                  "unk_token": None, "errors": "replace", "split_special_tokens": False}
        generation = {"bos_token_id": ids["<|endoftext|>"], "pad_token_id": ids["<|endoftext|>"],
                      "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]], "do_sample": True}
        template = QWEN_CHAT_TEMPLATE
    else:
        tok = train_byte_level_bpe(DEEPSEEK_SPECIAL)
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TAGS])
        bos_id, eos_id = tok.token_to_id(DEEPSEEK_BOS), tok.token_to_id(DEEPSEEK_EOS)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{DEEPSEEK_BOS}:0 $A:0", pair=f"{DEEPSEEK_BOS}:0 $A:0 {DEEPSEEK_BOS}:1 $B:1",
            special_tokens=[(DEEPSEEK_BOS, bos_id)])
        special = {"bos_token": _added_token(DEEPSEEK_BOS), "eos_token": _added_token(DEEPSEEK_EOS),
                   "pad_token": _added_token(DEEPSEEK_EOS)}
        config = {"add_bos_token": True, "add_eos_token": False, **special, "unk_token": None,
                  "legacy": True, "sp_model_kwargs": {}}
        generation = {"bos_token_id": bos_id, "eos_token_id": [eos_id, tok.token_to_id("<｜User｜>")],
                      "do_sample": True, "temperature": 0.6, "top_p": 0.95}
        template = DEEPSEEK_CHAT_TEMPLATE
    template = template if chat_template is None else chat_template
    config.update({"clean_up_tokenization_spaces": False, "model_max_length": 4096,
                   "tokenizer_class": "PreTrainedTokenizerFast", "added_tokens_decoder": _added_tokens_decoder(tok)})
    if template and template_file:
        (out / "chat_template.jinja").write_text(template, encoding="utf-8")
    elif template:
        config["chat_template"] = template
    tok.save(str(out / "tokenizer.json"))
    _write_json(out / "tokenizer_config.json", config)
    _write_json(out / "special_tokens_map.json", special)
    _write_json(out / "generation_config.json", generation)
    return out
