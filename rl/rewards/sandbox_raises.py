"""How a program's raise crosses from its process to the sandbox's judge (copied in beside sandbox_runner.py with
sandbox_judge.py; never imported by the trainer): the program's process replies `raised_reply` for the raise, and
the judge raises `program_error` of that reply: an exception of the nearest builtin classes among the program's
(a program's `class Invalid(ValueError)` as ValueError), so that a test's `except ValueError` catches it as it
would the program's own; anything else as ProgramRaised. Every reply is parsed strictly: a forged one gains
nothing a program could not raise itself.
"""

import builtins

import sandbox_values as values  # (sandbox_runner put its directory on the path for this import)

# The builtin exceptions a program's raise crosses as, by their exact names (no alias, nothing looked up): the
# Exception subclasses of this process's builtins. Not MemoryError: the program's process exits MEMORY_EXIT on one,
# and the judge's own ends the run the same way. A BaseException-only one (SystemExit, KeyboardInterrupt) is a plain
# raise, ProgramRaised. Nor StopIteration, StopAsyncIteration: map, filter and iter(f, sentinel) end at one their
# function raises, so a program raising it on every input passed `all(map(candidate, ...))` and its `not any`.
# No narrower rule keeps that and lets a test's `except StopIteration` catch one: the except clause and a C
# iterator's end (map's, filter's, PyIter_Next's) match the raise by the same subclass test (no __subclasscheck__:
# any class the one catches ends the other), which of the two a raise will meet is not known when it crosses, and a
# test that names StopIteration can still hand map a stub, a lambda calling one, or a program's callable it got back.
# A program's own `next(it, default)` and `except StopIteration` run in its process and are not affected.
RAISABLE = {name: kind for name, kind in vars(builtins).items() if isinstance(kind, type)
            and issubclass(kind, Exception) and kind.__name__ == name
            and kind not in (MemoryError, StopIteration, StopAsyncIteration)}
MAX_ERROR_CHARS = 4096  # the encoded arguments of a raised exception; longer ones cross as none
MAX_BASES = 8  # the nearest builtin classes a raise crosses with (`class E(KeyError, ValueError)`: two)
_DERIVED = {}  # (name, ...) -> the judge's class deriving from those RAISABLE classes, or None (program_error)


class ProgramRaised(Exception):
    """The program's function raised an exception of no builtin class (RAISABLE), or its process ended."""


def raised_reply(error: BaseException) -> bytes:
    """The program's process's reply for a raise: `["raised", NAME, ARGS]`, NAME the nearest class of RAISABLE
    among the error's classes (a program's `class Invalid(ValueError)` crosses as ValueError), ARGS its arguments
    when they are builtin values within MAX_ERROR_CHARS (else none); `["raised", NAME, ARGS, [NAME, ...]]` when
    several are nearest (`class E(KeyError, ValueError)`: none a subclass of another, in the error's MRO order, at
    most MAX_BASES); `["raised"]` for any other."""
    try:
        kinds = [kind for kind in type(error).__mro__ if RAISABLE.get(kind.__name__) is kind]
        nearest = [kind.__name__ for kind in kinds if not any(other is not kind and issubclass(other, kind)
                                                                 for other in kinds)][:MAX_BASES]
        if nearest:
            try:
                args = values.encode(tuple(error.args), 0, [MAX_ERROR_CHARS])
            except BaseException:  # an object, too long, an `args` that raises: no arguments
                args = '["tuple", []]'
            more = "" if len(nearest) == 1 else ", [" + ", ".join('"' + name + '"' for name in nearest[1:]) + "]"
            return ('["raised", "' + nearest[0] + '", ' + args + more + "]\n").encode("ascii")
    except BaseException:
        pass
    return b'["raised"]\n'


def program_error(reply: list) -> Exception:
    """What the judge raises for the program's raise (`raised_reply`): an instance of the named builtin class, or
    of a class of the judge's deriving from every named one (as the program's did), so that a test's `except
    ValueError` (or `except Exception`) catches it as it would the program's own; a name outside RAISABLE, or a
    reply that is not strictly one, is a plain raise (ProgramRaised). A program could raise any of these classes
    (a class of its own deriving from any bases Python accepts together, as `type` here does) with any such
    arguments itself: a forged reply gains it nothing."""
    if len(reply) in (3, 4) and type(reply[1]) is str and reply[1] in RAISABLE:
        kind = RAISABLE[reply[1]] if len(reply) == 3 else _derived([reply[1], *reply[3]]
                                                                    if type(reply[3]) is list else [])
        if kind is None:
            return ProgramRaised()
        try:
            args = values.decode(reply[2])
            values.encode(args, 0, [MAX_ERROR_CHARS])  # (ValueTooLarge: no arguments)
            if type(args) is not tuple:
                raise TypeError("not a tuple")
        except (ValueError, TypeError, RecursionError, values.ValueTooLarge):
            args = ()
        for given in (args, ()):  # (UnicodeDecodeError needs five arguments; ExceptionGroup, exceptions)
            try:
                error = kind(*given)
            except Exception:
                continue
            if isinstance(error, kind):
                return error
    return ProgramRaised()


def _derived(names: list):
    """The judge's class deriving from the RAISABLE classes `names` (2 to MAX_BASES distinct exact names), made
    once; None when the names are not that or Python refuses those bases together (a lay-out conflict, an
    inconsistent order), as it would have refused the program's class."""
    if not (2 <= len(names) <= MAX_BASES and all(type(name) is str and name in RAISABLE for name in names)
            and len(set(names)) == len(names)):
        return None
    key = tuple(names)
    if key not in _DERIVED:
        try:
            _DERIVED[key] = type(key[0], tuple(RAISABLE[name] for name in key), {"__module__": "builtins"})
        except TypeError:
            _DERIVED[key] = None
    return _DERIVED[key]
