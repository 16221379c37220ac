"""Jinja chat templates, rendered as Hugging Face transformers renders them.

A checkpoint's chat template (tokenizer_config.json's `chat_template`, or chat_template.jinja) is untrusted
code from the Hub, so it runs in jinja2's ImmutableSandboxedEnvironment. The environment is transformers'
(`transformers.utils.chat_template_utils._cached_compile_jinja_template`, v5.24):
- trim_blocks and lstrip_blocks on; the `loopcontrols` extension ({% break %}, {% continue %});
- a `{% generation %}...{% endgeneration %}` block (transformers marks assistant tokens with it) renders its
  body unchanged;
- globals `raise_exception(message)` (a TemplateError), `strftime_now(format)` (local time now), `dict` and
  `namespace` (a namespace that refuses underscore-prefixed names);
- the `tojson` filter is json.dumps with ensure_ascii off (jinja2's own escapes HTML characters).
Variables: `messages`, `tools` and `documents` (None unless given), `add_generation_prompt`, the tokenizer's
named special tokens (`bos_token`, `eos_token`, ... as strings, only those that are set), then the caller's
extra variables (e.g. `enable_thinking`), which win over special tokens of the same name.
"""

from __future__ import annotations

import datetime
import functools
import json
from typing import Any, Mapping, Sequence

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from r1jax.errors import UserError


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}body{% endgeneration %}` renders as `body`."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller) -> str:
        return caller()


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.datetime.now().strftime(format)


class _TemplateDict:
    """`dict(...)` in a template, without exposing the dict type itself."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """jinja2's namespace, refusing underscore-prefixed attribute names (no reach into Python internals)."""

    def __init__(*args, **kwargs):  # jinja2's signature trick, so namespace(self=...) still works
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a chat template cannot set {name!r} on a namespace")


@functools.lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, dict=_TemplateDict(),
                       namespace=_TemplateNamespace)
    return env.from_string(source)


_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")  # the first is the one templates read


def _normalize(message: Mapping[str, Any]) -> dict:
    """As transformers: keys whose value is None dropped (templates test for presence), a message's reasoning
    under every name templates read it by."""
    message = {k: v for k, v in message.items() if v is not None}
    reasoning = next((message[k] for k in _REASONING_FIELDS if k in message), None)
    if reasoning is not None:
        message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
    return message


class ChatTemplate:
    """A chat template's source, where it came from (named in errors) and the tokenizer's special tokens."""

    def __init__(self, source: str, origin: str, special_tokens: Mapping[str, str]):
        self.source = source
        self.origin = origin  # e.g. "/ckpt/tokenizer_config.json's chat_template"
        self.special_tokens = dict(special_tokens)

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False,
               tools: Sequence[Mapping] | None = None, documents: Sequence[Mapping] | None = None,
               **variables: Any) -> str:
        """The text of `messages` ([{"role": ..., "content": ...}]); a template error is a UserError."""
        if not messages:
            raise UserError(f"{self.origin}: there are no messages to render")
        messages = [_normalize(m) for m in messages]
        try:
            template = _compile(self.source)
        except jinja2.TemplateSyntaxError as err:
            raise UserError(f"{self.origin} is not a valid Jinja template (line {err.lineno}: {err.message})") from None
        try:
            return template.render(messages=messages, tools=tools, documents=documents,
                                   add_generation_prompt=add_generation_prompt,
                                   **{**self.special_tokens, **variables})
        # jinja2's: raise_exception(...), sandbox refusals (SecurityError), undefined calls; Python's, from the
        # template's own expressions: str + None, 1/0, a range past the sandbox's limit (OverflowError), a macro
        # calling itself without end
        except (jinja2.TemplateError, TypeError, ValueError, AttributeError, KeyError, IndexError, ArithmeticError,
                RecursionError) as err:
            raise UserError(f"{self.origin} failed to render: {type(err).__name__}: {err}") from None
