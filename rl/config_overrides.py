"""Dotted overrides and the merge of config parts over a dataclass schema (rl.config builds the run config
with them; rl.hf_policy and `r1jax export-hf` apply overrides to a checkpoint's config).

An override is `dotted.key=value`: the value is read as YAML (`grpo.kl_coef=0`, `rewards.names=[accuracy]`,
a list field takes a whole list), and a list item is named by its index as one more dotted part
(`stages.0.steps=5`, `stages.1.lr=1e-5`). A malformed override (no `=`, an empty or bracketed key part) or
one that does not fit the config (an index out of range, an unknown field, a bad value, a value that is not
YAML) is a UserError naming the override. No float anywhere in the config may be NaN or infinite (`.nan`,
`.inf`: every range check such as `x < 0` would let them through): a UserError names the key and where it
was set.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import re
from typing import Any, Sequence

import yaml as pyyaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from r1jax.errors import UserError
from r1jax.files import not_utf8
from r1jax.rl.config_checks import check_items, hint_at


@dataclasses.dataclass(frozen=True)
class Overrides:
    """Parsed overrides, applied in order over a config by `config_from_dicts` (and `student_model`)."""

    items: tuple[tuple[str, tuple[str, ...], Any], ...]  # (as written, key parts, value read as YAML)
    where: str = "overrides"  # what the overrides are, for error messages


# a key part: a field or dict-key name, or a list index (digits)
_KEY_PART = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*|[0-9]+")


def parse_overrides(overrides: Sequence[str], where: str = "overrides",
                    form: str = "dotted.key=value (a list item by its index: stages.0.steps=5)") -> Overrides:
    """"key=value" strings as `Overrides`; a malformed one is a UserError naming `where` and the override."""
    items = []
    for text in overrides:
        key, equals, raw = text.partition("=")
        parts = tuple(key.split("."))
        if not equals or not all(_KEY_PART.fullmatch(part) for part in parts) or parts[0].isdigit():
            raise UserError(f"{where}: {text!r} is not of the form {form}")
        if bad := not_utf8(raw):  # a byte that is not arrives from argv as a surrogate: YAML cannot read it
            raise UserError(f"{where}: {text!r}: the value of {key} is not valid UTF-8 ({bad})")
        try:  # the value as OmegaConf's own dotlist parser reads it (YAML: numbers, lists, null, ...)
            value = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={raw}"]))["value"]
        except OmegaConfBaseException as err:
            raise UserError(f"{where}: {text!r}: {_describe(err)}") from err
        except pyyaml.YAMLError as err:  # an unclosed [ or {
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise UserError(f"{where}: {text!r}: not valid YAML ({problem}){_colon_hint(raw)}") from None
        if hint := _colon_hint(raw, value):
            raise UserError(f"{where}: {text!r}: {hint.lstrip('; ')}")
        items.append((text, parts, value))
    return Overrides(tuple(items), where)


# a flow mapping's `key:value` with no space: `{prompt:question}`, `{arithmetic:{digits:2}}`
_NO_SPACE = re.compile(r"[{,]\s*([^\s{},:\[\]'\"]+):([^\s{},:\[\]]+|[{\[])")


def _colon_hint(raw: str, value: Any = None) -> str:
    """For a flow mapping with no space after a colon: YAML reads `{prompt:question}` as the key
    `prompt:question` with no value ("field 'data.fields.prompt:question' is not Optional") and
    `{arithmetic:{digits:2}}` as a syntax error ("found unexpected ':'"). With `value` (the parsed value), only
    when it holds such a key with no value."""
    found = _NO_SPACE.search(raw)
    if not found or value is not None and not _valueless_colon_key(value):
        return ""
    key, rest = found.groups()
    rest += "..." if rest in "{[" else ""
    return f"; YAML needs a space after the colon in a mapping: write '{key}: {rest}', not '{key}:{rest}'"


def _valueless_colon_key(value: Any) -> bool:
    if isinstance(value, dict):
        return any(isinstance(k, str) and ":" in k and v is None or _valueless_colon_key(v) for k, v in value.items())
    return isinstance(value, list) and any(_valueless_colon_key(item) for item in value)


def build_structured(schema, parts: Sequence[Any], source: str):
    """The dataclass object of `schema` with dict / OmegaConf-node parts merged and `Overrides` applied."""
    merged = schema
    cls = OmegaConf.get_type(schema)
    try:
        for part in parts:
            if isinstance(part, Overrides):
                _apply_overrides(merged, part, cls)
                continue
            check_items(cls, OmegaConf.to_container(part) if OmegaConf.is_config(part) else part, source)
            try:
                merged = OmegaConf.merge(merged, part)
            except TypeError as err:  # a list where the schema has a group or a group where it has a list
                raise UserError(f"{source}: {_container_mismatch(merged, part) or err}") from None
            check_finite(OmegaConf.to_container(merged, resolve=True), source)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise UserError(f"{source}: {_describe(err)}") from err


def check_finite(value: Any, where: str, key: str = "") -> None:
    """The one finiteness check of the config: a UserError naming `where` and the dotted key of the first
    NaN or infinite float in `value` (plain data: dicts, lists, tuples, numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{where}: {key or 'value'} = {value}: expected a finite number")
    items = value.items() if isinstance(value, collections.abc.Mapping) else \
        enumerate(value) if isinstance(value, (list, tuple)) else ()
    for name, item in items:
        check_finite(item, where, f"{key}.{name}" if key else str(name))


def _container_mismatch(node, part, key: str = "") -> str | None:
    """Where `part` gives a list for a group of the config `node` or a group for a list, said; None if not found."""
    def kind(value):
        if isinstance(value, collections.abc.Mapping):
            return "a mapping"
        return "a list" if isinstance(value, collections.abc.Sequence) and not isinstance(value, str) else None

    if not isinstance(part, collections.abc.Mapping) or not OmegaConf.is_dict(node):
        return None
    for name, value in part.items():
        if name not in node:
            continue
        where = f"{key}.{name}" if key else str(name)
        have, want = kind(value), kind(node[name])
        if have and want and have != want:
            return f"{where}: expected {want}, got {have}"
        found = _container_mismatch(node[name], value, where)
        if found:
            return found
    return None


def _apply_overrides(node, overrides: Overrides, cls: type) -> None:
    _make_writable(node)  # frozen dataclasses make read-only nodes; the result is frozen again by to_object
    for text, parts, value in overrides.items:
        try:
            parts, value = _resolve_key(node, parts, value)
            check_items(hint_at(cls, parts), value, f"{overrides.where}: {text!r}", ".".join(parts))
            OmegaConf.update(node, ".".join(parts), value, merge=True)
            written = OmegaConf.select(node, ".".join(parts))
            check_finite(OmegaConf.to_container(written, resolve=True) if OmegaConf.is_config(written)
                         else written, f"{overrides.where}: {text!r}", ".".join(parts))
        except _BadKey as err:
            raise UserError(f"{overrides.where}: {text!r}: {err}") from None
        except OmegaConfBaseException as err:
            raise UserError(f"{overrides.where}: {text!r}: {_describe(err)}") from err


class _BadKey(Exception):
    pass


def _resolve_key(node, parts: tuple[str, ...], value: Any) -> tuple[tuple[str, ...], Any]:
    """Walk `parts` through the config as far as it exists: list parts must be indices in range, and only
    groups (not values) have fields. Unknown names and bad values are left to OmegaConf, which names them.
    An item of an immutable sequence (a tuple field under OmegaConf 2.4; a list under 2.3) is set by
    replacing the whole sequence, so both versions accept `rewards.names.0=format`."""
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth])
        if OmegaConf.is_config(node) and isinstance(node, collections.abc.Sequence):
            if not part.isdigit():
                raise _BadKey(f"{where} is a list: name an item by its index ({where}.0, ...), not {part!r}")
            if int(part) >= len(node):
                raise _BadKey(f"{where} has {len(node)} items (indices 0..{len(node) - 1}); {part} is out of "
                              f"range" if len(node) else f"{where} is empty; there is no item {part}")
            if not isinstance(node, collections.abc.MutableSequence):
                if depth != len(parts) - 1:
                    raise _BadKey(f"{where} is set as a whole list ({where}=[...]) or item by item")
                items = OmegaConf.to_container(node)
                return parts[:depth], [*items[:int(part)], value, *items[int(part) + 1:]]
            node = node[int(part)]
        elif OmegaConf.is_dict(node):
            if part not in node:
                break
            node = node[part]
        elif node is None:
            raise _BadKey(f"{where} is null: set it whole ({where}=...) before its fields")
        else:
            raise _BadKey(f"{where} is a single value, it has no field {part!r}")
    return parts, value


def _make_writable(node) -> None:
    OmegaConf.set_readonly(node, False)
    children = node.values() if OmegaConf.is_dict(node) else node if OmegaConf.is_config(node) else ()
    for child in children:
        if OmegaConf.is_config(child):
            _make_writable(child)


def _describe(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    # OmegaConf leaves a tuple item's template unfilled: "Value '$VALUE' of type '$VALUE_TYPE' could not be ..."
    message = re.sub(r"Value '\$VALUE' of type '\$VALUE_TYPE'", "an item", str(err).splitlines()[0])
    return f"key {key!r}: {message}" if key else message
