"""Values of builtin types as ASCII JSON, and back: how a program's values leave the process that ran it.

`encode(value, 0, [MAX_VALUE_CHARS])` writes `[tag, ...]` with ASCII leaves: none, bool, int (hex), float
(float.hex: nan and inf exact), complex, str (UTF-8 hex), bytes (also bytearray), range (start, stop and step),
list, tuple, set, frozenset, dict, slice (`x[1:3]`'s key: its start, stop and step, any values). A subclass of
one of them is written as its builtin value, read with the builtin's own methods (its `__eq__` is never called);
anything else (a custom object, a numpy array) raises TypeError; a value nested deeper than MAX_DEPTH ValueError;
one whose text would pass the room given ValueTooLarge, before it is built.
`decode(node)` rebuilds an equal value of builtin types only (never eval) and raises ValueError (or
TypeError: an unhashable set item) on anything else, a float.hex past a float's range too (not OverflowError,
which a judge reading the program's names did not catch): what it reads may have been written by the program.

Used on both sides of the sandbox (rl.rewards.sandbox_runner, copied into it beside the runner, and
rl.rewards.code), never importing anything of the project; so it also holds the exit codes by which the
sandbox's processes say how a program ended (read by rl.rewards.sandbox).
"""

import re

# exit codes other than a program's own: it does not compile; it ran out of memory; the seccomp filter could not
# be loaded (the program never ran)
SYNTAX_EXIT, MEMORY_EXIT, SECCOMP_EXIT = 65, 66, 67
STARTED = "\x00"  # the runner's first byte on stderr, once the sandbox is whole and before the program runs: a run
# whose stderr lacks it failed in the sandbox (bwrap's own errors, the filter not loaded), not in the program
MAX_DEPTH = 100  # nesting of an encoded value; deeper (or self-containing) is refused
MAX_VALUE_CHARS = 1 << 18  # length of one encoded value; longer is "too_large" (~18k small ints, a 128k-char str)
_HEX_INT = re.compile(r"-?[0-9a-f]+")
_HEX_FLOAT = re.compile(r"-?(0x[0-9a-f]+(\.[0-9a-f]*)?p[+-][0-9]+|inf|nan)")
_HEX_BYTES = re.compile(r"(?:[0-9a-f]{2})*")
_CONTAINERS = ((list, "list", list.__iter__), (tuple, "tuple", tuple.__iter__), (set, "set", set.__iter__),
               (frozenset, "frozenset", frozenset.__iter__))
_BUILDERS = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}


class ValueTooLarge(Exception):
    """The encoded value would be longer than the room given."""


def encode(value, depth: int, room: list) -> str:
    """`value` as JSON text (module docstring). `room`: [characters left]; each value takes its text and a
    separator's 2, a container its tag and brackets before its items."""
    if depth > MAX_DEPTH:
        raise ValueError("nested too deeply")
    if value is None:
        return _taken('["none"]', room)
    if value is True or value is False:
        return _taken('["bool", "1"]' if value else '["bool", "0"]', room)
    leaf = _leaf(value, room)
    if leaf is not None:
        return _taken(leaf, room)
    if isinstance(value, slice):  # (final, as range is: no subclass)
        _take(17, room)
        return '["slice", [' + ", ".join([encode(v, depth + 1, room) for v in (value.start, value.stop,
                                                                                 value.step)]) + "]]"
    for base, tag, items in _CONTAINERS:
        if isinstance(value, base):
            _take(len(tag) + 12, room)
            return '["' + tag + '", [' + ", ".join([encode(v, depth + 1, room) for v in items(value)]) + "]]"
    if isinstance(value, dict):
        _take(16, room)
        return '["dict", [' + ", ".join([_pair(k, v, depth + 1, room) for k, v in dict.items(value)]) + "]]"
    raise TypeError(f"cannot encode {type(value).__name__}")


def _pair(key, value, depth: int, room: list) -> str:
    _take(2, room)  # its brackets
    return "[" + encode(key, depth, room) + ", " + encode(value, depth, room) + "]"


def _take(chars: int, room: list) -> None:
    room[0] -= chars
    if room[0] < 0:
        raise ValueTooLarge()


def _taken(text: str, room: list) -> str:
    _take(len(text) + 2, room)
    return text


def _fits(chars: int, room: list) -> None:
    """ValueTooLarge when a leaf's text, at least `chars` long, cannot fit: before it is built."""
    if chars > room[0]:
        raise ValueTooLarge()


def _leaf(value, room: list):
    if isinstance(value, int):
        _fits(int.bit_length(value) // 4, room)
        return '["int", "' + int.__format__(value, "x") + '"]'
    if isinstance(value, float):
        return '["float", "' + float.hex(value) + '"]'
    if isinstance(value, complex):
        real, imag = complex.__getnewargs__(value)
        return '["complex", "' + float.hex(real) + '", "' + float.hex(imag) + '"]'
    if isinstance(value, str):  # (its UTF-8: at least a byte, two hex digits, a character)
        _fits(2 * str.__len__(value), room)
        return '["str", "' + bytes.hex(str.encode(value, "utf-8", "surrogatepass")) + '"]'
    if isinstance(value, range):
        ends = (value.start, value.stop, value.step)
        _fits(sum(int.bit_length(end) // 4 for end in ends), room)
        return '["range", ' + ", ".join('"' + int.__format__(end, "x") + '"' for end in ends) + "]"
    if isinstance(value, bytes):
        _fits(2 * bytes.__len__(value), room)
        return '["bytes", "' + bytes.hex(value) + '"]'
    if isinstance(value, bytearray):  # bytearray(b"a") == b"a"
        _fits(2 * bytearray.__len__(value), room)
        return '["bytes", "' + bytearray.hex(value) + '"]'
    return None


def decode(node, depth: int = 0):
    """The value `encode` wrote, from its parsed JSON (module docstring)."""
    if not (isinstance(node, list) and node and isinstance(node[0], str)) or depth > MAX_DEPTH:
        raise ValueError(f"not an encoded value: {node!r:.80}")
    tag, args = node[0], node[1:]
    if not all(isinstance(a, str) for a in args) or tag in ("list", "tuple", "set", "frozenset", "dict",
                                                                                   "slice"):
        return _decode_container(tag, args, depth)
    if (tag, args) in (("none", []), ("bool", ["0"]), ("bool", ["1"])):
        return None if tag == "none" else args == ["1"]
    if tag == "int" and len(args) == 1 and _HEX_INT.fullmatch(args[0]):
        return int(args[0], 16)
    if tag in ("float", "complex") and len(args) == (1 if tag == "float" else 2):
        if not all(_HEX_FLOAT.fullmatch(a) for a in args):
            raise ValueError(f"not a float.hex: {args!r:.80}")
        try:  # (float.hex never writes one past a float's range: only a forged line has it)
            parts = [float.fromhex(a) for a in args]
        except OverflowError:
            raise ValueError(f"a float.hex past a float's range: {args!r:.80}") from None
        return parts[0] if tag == "float" else complex(*parts)
    if tag == "range" and len(args) == 3 and all(_HEX_INT.fullmatch(a) for a in args):
        return range(*(int(a, 16) for a in args))  # (a step of 0: ValueError)
    if tag in ("str", "bytes") and len(args) == 1 and _HEX_BYTES.fullmatch(args[0]):
        raw = bytes.fromhex(args[0])
        return raw if tag == "bytes" else raw.decode("utf-8", "surrogatepass")
    raise ValueError(f"not an encoded value: {node!r:.80}")


def _decode_container(tag: str, args: list, depth: int):
    if len(args) != 1 or not isinstance(args[0], list):
        raise ValueError(f"not an encoded {tag}: {args!r:.80}")
    if tag == "slice" and len(args[0]) == 3:
        return slice(*(decode(item, depth + 1) for item in args[0]))
    if tag in _BUILDERS:
        return _BUILDERS[tag](decode(item, depth + 1) for item in args[0])
    if tag != "dict" or not all(isinstance(pair, list) and len(pair) == 2 for pair in args[0]):
        raise ValueError(f"not an encoded value: {tag!r:.80}")
    return {decode(k, depth + 1): decode(v, depth + 1) for k, v in args[0]}
