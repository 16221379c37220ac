"""Checks the config sections share: bounds (int32 sizes, temperatures, bools), and the types of a config's
fields checked on the plain values a YAML file or an override gives, where OmegaConf reads a wrong one silently
or names no key: a bool field given a non-bool (`plots: 2` was true), a list or dict item of the wrong kind
(`rewards.weights: [a]` said "Value '$VALUE' ... could not be converted"; `rewards.names: [[a]]` "unhashable
type"); and the one rule of a prompt and its token budget against the model's context (`context_overflow`)."""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import functools
import typing
from typing import Any, Sequence

from r1jax.errors import UserError

INT32_MAX = 2**31 - 1  # token ids, positions, top-k and row indices are int32 on the device
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-3, 100.0  # below: logits / T overflow float32; above: uniform draws


def context_overflow(prompt_tokens: int, new_tokens: int, context: int) -> str | None:
    """How a completion of `new_tokens` after a prompt of `prompt_tokens` fails to fit a model's `context` (its
    model.max_position_embeddings; positions past it have no rotary angles or cache slots): "prompt" when the
    prompt fills the context by itself (no token budget fits, so the prompt is the culprit, not the budget),
    "budget" when the two together pass it, None when they fit (a completion that exactly fills it fits). The
    callers word the error: `r1jax eval` / `generate` / `compile` (rl.cli.common.check_context) and the trainer's
    preflight (rl.train.preflight.check_prompt_lengths), which refuse the same lengths."""
    if prompt_tokens >= context:
        return "prompt"
    return "budget" if prompt_tokens + new_tokens > context else None


def check_temperature(key: str, value: float, greedy: bool = True) -> None:
    """A temperature: 0 (greedy; when `greedy`) or in [1e-3, 100]; else a UserError naming `key`."""
    if not ((greedy and value == 0) or MIN_TEMPERATURE <= value <= MAX_TEMPERATURE):
        raise UserError(f"{key}={value}: must be {'0 (greedy) or ' if greedy else ''}in "
                        f"[{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}]")


def check_sampling(section: str, temperature: float, top_p: float, top_k: int) -> None:
    """A section's sampling settings (`sampling`, `eval`): the temperature (`check_temperature`), top-p in
    (0, 1], top-k in [0, 2^31-1] (0: no filter; the config checks it against the vocabulary too)."""
    check_temperature(f"{section}.temperature", temperature)
    if not 0 < top_p <= 1:
        raise UserError(f"{section}.top_p={top_p}: must be in (0, 1]")
    if not 0 <= top_k <= INT32_MAX:
        raise UserError(f"{section}.top_k={top_k}: must be in [0, 2^31-1] (0: no top-k filter; at most "
                        "model.vocab_size)")


def check_top_k(key: str, top_k: int, vocab_size: int) -> None:
    """A top-k within the model's vocabulary (the config's `sampling.top_k` / `eval.top_k`, and the flags
    `generate --top-k` / `eval --top-k` that replace them): else a UserError naming `key`."""
    if top_k > vocab_size:
        raise UserError(f"{key}={top_k}: must be at most model.vocab_size={vocab_size} (0: no top-k filter)")


def check_bool(key: str, value: object) -> None:
    """A bool field given a number or a string (`plots: 2` was read as true): a UserError naming `key`."""
    if type(value) is not bool:
        raise UserError(f"{key}={value!r}: expected true or false")


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}


def _unwrap_optional(hint: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) is typing.Union and len(args) == 1 else hint


def hint_at(cls: type, parts: Sequence[str]) -> Any:
    """The type of the config field at `parts` (a list item by its index), Any where it is not known."""
    for part in parts:
        cls = _unwrap_optional(cls)
        origin, args = typing.get_origin(cls), typing.get_args(cls)
        cls = _hints(cls).get(part, Any) if dataclasses.is_dataclass(cls) else \
            args[0] if origin in (list, tuple) and args and part.isdigit() else \
            args[1] if origin is dict and len(args) == 2 else Any
    return cls


_SCALARS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def check_items(hint: Any, value: Any, where: str, key: str = "", item: bool = False) -> None:
    """`value` (plain data for a field of type `hint`) refused naming `where` and the key where OmegaConf reads
    it silently or names no key: a bool field given a non-bool (`plots: 2` was true), a list or dict item of the
    wrong kind (`weights: [a]`: "Value '$VALUE' ... could not be converted"; `names: [[a]]`: "unhashable")."""
    if value is None and item and (hint in _SCALARS or dataclasses.is_dataclass(hint)):  # a list item (`tasks:
        # [arithmetic, ~]`, a YAML list's empty `-`): OmegaConf named no key ("Incompatible value 'None' for field
        # of type 'str'"), or a stage as "NoneType is not a subclass of StageConfig"
        want = _SCALARS[hint] if hint in _SCALARS else f"a mapping of {hint.__name__}'s fields"
        raise UserError(f"{where}: {key} = null: expected {want}")
    hint = _unwrap_optional(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if value is None or isinstance(value, str) and "${" in value:  # null: OmegaConf's check; interpolations
        return
    if dataclasses.is_dataclass(hint) and isinstance(value, collections.abc.Mapping):
        for name, element in value.items():
            if name in _hints(hint):
                check_items(_hints(hint)[name], element, where, f"{key}.{name}" if key else str(name))
            elif item:  # in a list's item OmegaConf names the key without its place ("key 'stepz'")
                close = difflib.get_close_matches(str(name), list(_hints(hint)), n=1)
                raise UserError(f"{where}: key '{key}.{name}': not in {hint.__name__}"
                                + (f". Did you mean: '{close[0]}'?" if close else ""))
    elif origin in (list, tuple) and args and isinstance(value, (list, tuple)):
        for index, element in enumerate(value):
            check_items(args[0], element, where, f"{key}.{index}", item=True)
    elif origin is dict and len(args) == 2 and isinstance(value, collections.abc.Mapping):
        for name, element in value.items():
            check_items(args[1], element, where, f"{key}.{name}", item=True)
    elif isinstance(value, (list, tuple)) and (origin is dict or dataclasses.is_dataclass(hint)) or \
            isinstance(value, collections.abc.Mapping) and origin in (list, tuple):  # OmegaConf: "Cannot merge
        # incompatible container types" (`sharding.rules=[]`, `stages={name: x}`), or "dict is not a TupleConfig"
        have, want = ("a list", f"a mapping of {hint.__name__}'s fields" if dataclasses.is_dataclass(hint) else
                      "a mapping") if isinstance(value, (list, tuple)) else ("a mapping", "a list")
        raise UserError(f"{where}: {key}: expected {want}, got {have}")
    elif not isinstance(value, (collections.abc.Mapping, list, tuple)) and (
            origin in (list, tuple, dict) or dataclasses.is_dataclass(hint)):  # OmegaConf: "str is not a ListConfig"
        group = origin in (list, tuple) and args and dataclasses.is_dataclass(args[0])  # (stages=grpo: "[grpo]"
        # led to "stages.0 = 'grpo': expected a mapping")
        want = (f"a list of mappings of {args[0].__name__}'s fields, e.g. [{{"
                + ", ".join(f"{name}: ..." for name in list(_hints(args[0]))[:2]) + "}]") if group else \
            f"a list, e.g. [{value}]" if origin in (list, tuple) else \
            f"a mapping of {hint.__name__}'s fields" if dataclasses.is_dataclass(hint) else "a mapping"
        raise UserError(f"{where}: {key} = {value!r}: expected {want}")
    elif (item or hint is bool) and hint in _SCALARS and not _fits(hint, value):
        raise UserError(f"{where}: {key} = {value!r}: expected {_SCALARS[hint]}")


def _fits(hint: type, value: Any) -> bool:
    """Whether OmegaConf may read `value` as a `hint` without a loss of meaning (a bool only from a bool)."""
    if isinstance(value, (collections.abc.Mapping, list, tuple)) or hint is bool:
        return hint is bool and type(value) is bool
    if hint is str or type(value) is bool:
        return hint is str
    try:
        return not isinstance(value, str) or hint(value) is not None
    except ValueError:
        return False
