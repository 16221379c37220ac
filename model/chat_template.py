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
extra variables (e.g. `enable_thinking`), which win over special tokens of the same name; `RESERVED_VARIABLES`
are set by every render and cannot be extra variables.
Bounds transformers lacks: jinja2's sandbox bounds `range()` only, so `*`, `+`, `~` and `**` refuse to build a
value past `MAX_LENGTH` characters or items (`'a' * 2**45`, a string doubled with `~` in a loop) or an integer
past `MAX_INT_BITS` bits (`9**9**9`), a render's loops turn at most `MAX_LOOP_TURNS` times in all (nested
`range(100000)` loops ran for hours, making nothing) for at most `MAX_RENDER_SECONDS` (each turn's work bounded
but repeated: a loop of `wordwrap`s ran 0.2 s a turn, hours in all), `lipsum` writes at most `MAX_LENGTH // 10` words,
`wordwrap` takes at most `MAX_WORDWRAP` characters (quadratic in a long word), a filter or a string method takes
no integer past `MAX_LENGTH` (`center(10**10)`, `slice(10**10)`) and makes no text past it (`replace`, `join`,
`indent`, `expandtabs`, `format` and `%`, whose lengths are bounded from their arguments: `_check_call`), and the
rendered text stops at `MAX_LENGTH` characters; a render that runs out of memory anyway is a UserError naming the
template, as every other failure to render is.
"""

from __future__ import annotations

import contextvars
import datetime
import functools
import json
import re
import time
import types
from typing import Any, Mapping, Sequence

import jinja2
import jinja2.compiler
import jinja2.ext
import jinja2.filters
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from r1jax.errors import UserError

RESERVED_VARIABLES = ("messages", "add_generation_prompt")  # set by every render: never a caller's extra variable
MAX_LENGTH = 10**7  # characters (or list items) of a value a template builds, and of its rendered text
MAX_INT_BITS = 1 << 16  # of an integer a template computes (a chat template counts turns, not bignums)
MAX_LOOP_TURNS = 10**6  # of all a render's {% for %} loops together (a conversation's messages and tools: far fewer)
MAX_RENDER_SECONDS = 60.0  # a render's loops turn no more after it (a real template's render takes milliseconds)
_TURNS_LEFT: contextvars.ContextVar[list] = contextvars.ContextVar("chat_template_turns_left")  # [turns, deadline]


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


MAX_JSON_INDENT = 64  # tojson's indent (each item of each level repeats it: indent=10**7 made gigabytes)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    if indent is not None and (indent if isinstance(indent, int) else len(str(indent))) > MAX_JSON_INDENT:
        raise _too_big("tojson", f"an indent of {indent if isinstance(indent, int) else len(str(indent))}",
                       MAX_JSON_INDENT)
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _lipsum(n=5, html=True, min=20, max=100) -> str:
    """jinja2's `lipsum` global, bounded: `lipsum(100000, False, 99999, 100000)` wrote 10^10 words (hours, and
    the host's memory) outside any loop a template runs."""
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n, min, max)):
        raise TypeError("lipsum takes integers n, min and max")
    if n * max > MAX_LENGTH // 10:  # words of about 7 characters
        raise _too_big("lipsum", f"up to {n * max} words", MAX_LENGTH // 10)
    return jinja2.utils.generate_lorem_ipsum(n, html, min, max)


MAX_WORDWRAP = 10**5  # characters `wordwrap` takes: Python's textwrap is quadratic in a long word's length


def _wordwrap(environment, text, *args, **kwargs) -> str:
    """jinja2's `wordwrap` filter, bounded: `('a' * 10**7)|wordwrap(1)` ran for about 40 minutes (textwrap cuts a
    long word one slice at a time: 2.5 s for 400,000 characters)."""
    if len(str(text)) > MAX_WORDWRAP:
        raise _too_big("wordwrap", f"a text of {len(str(text))} characters to wrap", MAX_WORDWRAP)
    return jinja2.filters.do_wordwrap(environment, text, *args, **kwargs)


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


def _length(value: Any) -> int | None:
    return len(value) if isinstance(value, (str, list, tuple)) else None


def _too_big(what: str, size: int, limit: int) -> jinja2.exceptions.SecurityError:
    return jinja2.exceptions.SecurityError(f"{what} would make {size}, more than the {limit} a chat template may")


def _check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse (SecurityError) a `*`, `+` or `**` whose result would pass MAX_LENGTH or MAX_INT_BITS."""
    sizes = _length(left), _length(right)
    ints = [isinstance(v, int) for v in (left, right)]
    if operator == "*" and sizes[0] is not None and ints[1]:
        length = sizes[0] * right
    elif operator == "*" and sizes[1] is not None and ints[0]:
        length = left * sizes[1]
    elif operator == "+" and None not in sizes:
        length = sizes[0] + sizes[1]
    else:
        length = 0
    if length > MAX_LENGTH:
        raise _too_big(f"{operator!r}", f"{length} characters or items", MAX_LENGTH)
    if all(ints):
        bits = (right * abs(left).bit_length() if operator == "**" and abs(left) > 1 and right > 0 else
                left.bit_length() + right.bit_length() if operator == "*" else 0)
        if bits > MAX_INT_BITS:
            raise _too_big(f"{operator!r}", f"an integer of about {bits} bits", MAX_INT_BITS)


# a %-field with its mapping key ("%(a)9999999s": the width after a key went uncounted), or a {}-field
_FORMAT_FIELD = re.compile(r"%(?:\([^()]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?|\{[^{}]*\}")

_FORMATS = ("format", "%", "format_map")  # the str.format method and jinja2's filter share the name
# what builds its text (or turns) from an integer it is given, a width or a count: the others take integers that
# are values or harmless bounds (|default(12345678901), truncate(10**10), batch(10**10))
_WIDTH_TAKERS = frozenset({"center", "ljust", "rjust", "zfill", "indent", "expandtabs", "slice"})
_DYNAMIC_WIDTH = re.compile(r"%(?:\([^()]*\))?[#0\- +]*(?:\*|\d*\.\*)|\{[^{}]*\{")  # '%*d', '%.*f', '{0:{1}}'


def _dynamic_width(subject: Any) -> bool:
    """Whether a format string takes a width or a precision from its values."""
    return isinstance(subject, str) and _DYNAMIC_WIDTH.search(subject) is not None


def _check_call(name: str, subject: Any, args: tuple, kwargs: Mapping) -> None:
    """Refuse (SecurityError) a filter or string method `name` of `subject` given an integer past MAX_LENGTH (a
    width, a count: `center(10**10)` allocated 10 GB before any bound saw it), or whose text would pass MAX_LENGTH
    though each input is within it (`replace`, `join`, `indent`, `expandtabs`, `format` and `%`: a bound of the
    result's length from the inputs')."""
    if name == "%" and not isinstance(subject, str):
        return  # a number's remainder ("loop.index0 % 2"), which makes no text
    # the integers a format string formats are values, not widths ("%d" % 20240726), unless it takes a width from
    # them ("%*d", "{0:{1}}")
    takes_width = name in _WIDTH_TAKERS or name in _FORMATS and _dynamic_width(subject)
    for value in (*args, *kwargs.values()) if takes_width else ():
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_LENGTH:
            raise jinja2.exceptions.SecurityError(f"{name} was given {value}, more than the {MAX_LENGTH} a chat "
                                                  "template may pass (a width, a count)")
    size = _result_length(name, subject, args, kwargs)
    if size > MAX_LENGTH:
        raise _too_big(name, f"up to {size} characters", MAX_LENGTH)


def _result_length(name: str, subject: Any, args: tuple, kwargs: Mapping) -> int:
    """An upper bound of the length of the text `name` makes (0 where no input can multiply another)."""
    if name == "replace" and len(args) >= 2 and isinstance(subject, str):
        old, new = str(args[0]), str(args[1])
        return len(subject) + subject.count(old) * max(len(new) - len(old), 0)
    if name in ("indent", "expandtabs"):
        text = str(subject)
        width = args[0] if args else kwargs.get("width" if name == "indent" else "tabsize", 4)
        width = width if isinstance(width, int) else len(str(width))
        return len(text) + (text.count("\n") + 1 if name == "indent" else text.count("\t")) * width
    if name in ("join", "str.join"):
        items, separator = (args[0] if args else (), subject) if name == "str.join" else (
            subject, args[0] if args else kwargs.get("d", ""))
        if isinstance(items, (str, list, tuple, dict)):
            return sum(len(str(item)) for item in items) + len(str(separator)) * len(items)
    if name in _FORMATS and isinstance(subject, str):
        values = [v for arg in (*args, *kwargs.values())
                  for v in (arg.values() if isinstance(arg, Mapping) else arg if isinstance(arg, tuple) else [arg])]
        # whole fields (findall gave only the %-fields' groups: "{0:>9999999}" counted no width, 3 GB in 300)
        fields = [match.group(0) for match in _FORMAT_FIELD.finditer(subject)]
        widths = [v for v in values if isinstance(v, int)] if _dynamic_width(subject) else []
        numbers = [number for field in fields for number in re.findall(r"\d+", field)]  # widths, precisions
        widest = max([len(str(v)) for v in values] + widths + [
            int(number) if len(number) <= len(str(MAX_LENGTH)) else MAX_LENGTH + 1 for number in numbers] + [0])
        return len(subject) + len(fields) * widest
    return 0


def _bounded_filter(name: str, function):
    """jinja2's filter `name`, refusing what `_check_call` refuses (the filter's value is its first argument after
    the environment or context jinja2 passes it)."""
    skip = 1 if jinja2.utils._PassArg.from_obj(function) is not None else 0

    @functools.wraps(function)
    def bounded(*args, **kwargs):
        args = list(args)
        if name == "join" and len(args) > skip and not isinstance(args[skip], (str, list, tuple, dict)):
            args[skip] = list(args[skip])  # a generator (map, select): its items counted, then joined
        _check_call(name, args[skip] if len(args) > skip else None, tuple(args[skip + 1:]), kwargs)
        return function(*args, **kwargs)

    return bounded


class _CodeGenerator(jinja2.compiler.CodeGenerator):
    """jinja2's, with `a ~ b` joined by the environment's `join_bounded` (jinja2 joins it with no hook) and each
    turn of a `{% for %}` loop counted (jinja2 bounds neither)."""

    def visit_For(self, node: jinja2.nodes.For, frame) -> None:
        # each turn is counted (`_BoundedSandbox.count_turn`): by the loop's filter, where it has one (`{% for x
        # in xs if test %}` turns through items the body never sees), else by the body's first statement
        nodes = jinja2.nodes
        count = nodes.Call(nodes.EnvironmentAttribute("count_turn"), [], [], None, None, lineno=node.lineno)
        body, test = (node.body, nodes.And(count, node.test, lineno=node.lineno)) if node.test else (
            [nodes.ExprStmt(count, lineno=node.lineno), *node.body], None)
        super().visit_For(nodes.For(node.target, node.iter, body, node.else_, test, node.recursive,
                                    lineno=node.lineno), frame)

    def visit_Concat(self, node: jinja2.nodes.Concat, frame) -> None:
        self.write("environment.join_bounded((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """jinja2's immutable sandbox whose `*`, `+`, `**` (`_check_binop`), `%`, `~`, filters and string methods
    (`_check_call`) are bounded."""

    intercepted_binops = frozenset({"*", "+", "**", "%"})
    code_generator_class = _CodeGenerator

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        if operator == "%":
            _check_call("%", left, (right,), {})
        else:
            _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja2's signature: keywords pass through)
        if isinstance(__obj, types.BuiltinMethodType) and isinstance(__obj.__self__, str):
            name = "str.join" if __obj.__name__ == "join" else __obj.__name__
            if name == "str.join" and args and not isinstance(args[0], (str, list, tuple, dict)):
                args = (list(args[0]), *args[1:])  # a generator (map, select): its items counted, then joined
            _check_call(name, __obj.__self__, args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any):
        wrapped = super().wrap_str_format(value)  # str.format / format_map, sandboxed by jinja2
        if wrapped is None:
            return None

        def bounded(*args, **kwargs):
            _check_call(value.__name__, value.__self__, args, kwargs)
            return wrapped(*args, **kwargs)

        return bounded

    @staticmethod
    def count_turn() -> bool:
        left = _TURNS_LEFT.get()  # ChatTemplate.render sets each render's
        left[0] -= 1
        if left[0] < 0:
            raise jinja2.exceptions.SecurityError(f"its loops would turn more than the {MAX_LOOP_TURNS} times a "
                                                  f"chat template may in one render")
        if time.monotonic() > left[1]:
            raise jinja2.exceptions.SecurityError(f"its loops ran past the {MAX_RENDER_SECONDS} s a chat template may "
                                                  "take in one render")
        return True

    @staticmethod
    def join_bounded(values) -> str:
        parts = [str(value) for value in values]  # as jinja2's str_join (autoescape is off)
        length = sum(map(len, parts))
        if length > MAX_LENGTH:
            raise _too_big("'~'", f"{length} characters", MAX_LENGTH)
        return "".join(parts)


@functools.lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    env = _BoundedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols])
    env.filters.update(tojson=_tojson, wordwrap=jinja2.pass_environment(_wordwrap))
    env.filters.update({name: _bounded_filter(name, function) for name, function in env.filters.items()})
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, dict=_TemplateDict(),
                       namespace=_TemplateNamespace, lipsum=_lipsum)
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

    def render(self, messages: Sequence[Mapping[str, Any]], /, add_generation_prompt: bool = False,
               tools: Sequence[Mapping] | None = None, documents: Sequence[Mapping] | None = None,
               **variables: Any) -> str:
        """The text of `messages` ([{"role": ..., "content": ...}]); a template error is a UserError."""
        if not messages:
            raise UserError(f"{self.origin}: there are no messages to render")
        reserved = [name for name in RESERVED_VARIABLES if name in variables]
        if reserved:
            raise UserError(f"{self.origin}: {reserved[0]!r} is set by r1jax itself, not an extra variable")
        messages = [_normalize(m) for m in messages]
        try:
            template = _compile(self.source)
        except jinja2.TemplateSyntaxError as err:
            raise UserError(f"{self.origin} is not a valid Jinja template (line {err.lineno}: {err.message})") from None
        context = {**self.special_tokens, **variables, "messages": messages, "tools": tools, "documents": documents,
                   "add_generation_prompt": add_generation_prompt}
        turns = _TURNS_LEFT.set([MAX_LOOP_TURNS, time.monotonic() + MAX_RENDER_SECONDS])
        try:
            text = _bounded_text(template.generate(context))
        # jinja2's: raise_exception(...), sandbox refusals (SecurityError, the bounds above), undefined calls;
        # Python's, from the template's own expressions: str + None, 1/0, a range past the sandbox's limit
        # (OverflowError), a macro calling itself without end, a value too big for the host (MemoryError)
        except (jinja2.TemplateError, TypeError, ValueError, AttributeError, KeyError, IndexError, ArithmeticError,
                RecursionError, MemoryError) as err:
            detail = f": {err}" if str(err) else " (out of memory)" if isinstance(err, MemoryError) else ""
            raise UserError(f"{self.origin} failed to render: {type(err).__name__}{detail}") from None
        finally:
            _TURNS_LEFT.reset(turns)
        if text is None:
            raise UserError(f"{self.origin} renders more than {MAX_LENGTH} characters for one conversation")
        return text


def _bounded_text(chunks) -> str | None:
    """The rendered text, or None once it passes MAX_LENGTH characters (the rest is not rendered)."""
    text, length = [], 0
    for chunk in chunks:
        length += len(chunk)
        if length > MAX_LENGTH:
            return None
        text.append(chunk)
    return "".join(text)
