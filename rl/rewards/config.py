"""Reward and reward-pool configs: frozen, typed (OmegaConf-compatible), validated on construction."""

from __future__ import annotations

import dataclasses
import re

from r1jax.errors import UserError
from r1jax.rl.config_checks import INT32_MAX
from r1jax.rl.rewards.sandbox import MODES, SandboxLimits
from r1jax.rl.tasks.math_answer import MAX_ANSWER_CHARS

# Language code -> Unicode script names (the first word of unicodedata.name) that count as that language.
LANGUAGE_SCRIPTS = {
    "en": ("LATIN",), "fr": ("LATIN",), "de": ("LATIN",), "es": ("LATIN",), "it": ("LATIN",),
    "pt": ("LATIN",), "zh": ("CJK",), "ja": ("CJK", "HIRAGANA", "KATAKANA"), "ko": ("HANGUL",),
    "ru": ("CYRILLIC",), "el": ("GREEK",), "ar": ("ARABIC",),
}


class FieldError(UserError):
    """A field's value refused on construction: "rewards.overlong_buffer = 9: expected in [0, max_length=8]".
    `expected` names the other fields of its section it depends on as `{field}` (their values in `refs`), so
    a command that sets the fields from its flags can say it again naming the flags (`for_flags`)."""

    def __init__(self, section: str, field: str, value: object, expected: str, refs: dict[str, object]):
        self.section, self.field, self.value, self.expected, self.refs = section, field, value, expected, refs
        super().__init__(f"{section}.{field} = {value!r}: expected {self._expected({f: f + '=' for f in refs})}")

    def __reduce__(self):  # pickled whole: it crosses process boundaries (reward workers, data loaders)
        return FieldError, (self.section, self.field, self.value, self.expected, self.refs)

    def _expected(self, names: dict[str, str]) -> str:
        """`expected`, each field it names said as `names[field]` followed by its value."""
        return self.expected.format(**{f: f"{names[f]}{v!r}" for f, v in self.refs.items()}) if self.refs \
            else self.expected

    def for_flags(self, flags: dict[str, str]) -> UserError:
        """This refusal naming the flag `flags["section.field"]` of each field it names ("--overlong-buffer 9:
        expected in [0, --max-length 8]"); itself where a field has no flag."""
        names = {f: flags.get(f"{self.section}.{f}") for f in (self.field, *self.refs)}
        if None in names.values():
            return self
        return UserError(f"{names[self.field]} {self.value!r}: expected "
                         + self._expected({f: f"{flag} " for f, flag in names.items()}))


def _require(ok: bool, section: str, field: str, value: object, expected: str, **refs: object) -> None:
    """A FieldError unless `ok`; `refs`: the other fields `expected` names as `{field}`."""
    if not ok:
        raise FieldError(section, field, value, expected, refs)


# Upper bounds: each far past any real need, each within what the OS calls take (setrlimit's rlim_t takes
# bytes < 2^63; a wait's timeout at most threading.TIMEOUT_MAX, ~9.2e9 s, counted from now)
MAX_MEMORY_MB = 1 << 30  # 1 PiB of address space, per worker or program
MAX_SECONDS = 1e6  # ~11.6 days: a worker's item, a program's wall or CPU time
MAX_DEADLINE_S = 1e9  # a batch's deadline (`r1jax score` derives it: rows per worker x the item's timeout)
MIN_SECONDS = 0.01  # a shorter timeout fails every item (1e-300 was accepted)
MAX_WORKERS = 1024  # reward worker processes (a fixed cap, not the host's CPUs: a config means the same anywhere)
MAX_WEIGHT = 1000.0  # |weight| of a reward (rewards are in [-1, 1]; 1e308 made the total inf)
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")  # an absolute dotted module name


@dataclasses.dataclass(frozen=True)
class CodeConfig:
    """How the `code` reward runs programs (rl.rewards.sandbox): the isolation mode and each run's limits.
    A stdin/stdout test is one run; all assertion tests of an item are one run."""

    sandbox: str = "bwrap"  # bwrap | rlimits_only (explicitly accepts running without namespaces)
    partial: bool = False  # False: 1 when every test passes, else 0; True: the passed fraction
    wall_s: float = 3.0  # per run, wall clock; the whole process group is killed at the limit
    cpu_s: int = 2  # per run, RLIMIT_CPU
    memory_mb: int = 512  # per process, RLIMIT_AS
    processes: int = 16  # RLIMIT_NPROC inside the sandbox
    file_mb: int = 16  # RLIMIT_FSIZE: the largest file a program can write
    open_files: int = 64  # RLIMIT_NOFILE
    output_bytes: int = 1 << 20  # stdout read per run; more ends the run
    tmp_mb: int = 64  # size of the private /tmp (bwrap)
    max_program_chars: int = 65536  # a longer program is not run (it fails)

    def __post_init__(self) -> None:
        s = "rewards.code"
        _require(self.sandbox in MODES, s, "sandbox", self.sandbox, f"one of {', '.join(MODES)}")
        _require(MIN_SECONDS <= self.wall_s <= MAX_SECONDS, s, "wall_s", self.wall_s,
                 f"in [{MIN_SECONDS:g}, {MAX_SECONDS:g}] seconds")
        _require(1 <= self.cpu_s <= MAX_SECONDS, s, "cpu_s", self.cpu_s, f"an integer in [1, {MAX_SECONDS:g}]")
        for field in ("file_mb", "tmp_mb"):
            _require(1 <= getattr(self, field) <= MAX_MEMORY_MB, s, field, getattr(self, field),
                     f"in [1, {MAX_MEMORY_MB}] (2^30 MB)")
        for field, high in (("processes", 1 << 22), ("max_program_chars", 1 << 30)):  # 2^22: Linux's pid_max
            _require(1 <= getattr(self, field) <= high, s, field, getattr(self, field), f"in [1, {high}]")
        _require(64 <= self.memory_mb <= MAX_MEMORY_MB, s, "memory_mb", self.memory_mb,
                 f">= 64 (the interpreter maps ~20 MB), at most {MAX_MEMORY_MB} (2^30 MB)")
        _require(8 <= self.open_files <= 1 << 20, s, "open_files", self.open_files, "in [8, 2^20] (Linux's nr_open)")
        _require(1024 <= self.output_bytes <= 1 << 30, s, "output_bytes", self.output_bytes, "in [1024, 2^30]")

    def limits(self) -> SandboxLimits:
        return SandboxLimits(wall_s=self.wall_s, cpu_s=self.cpu_s, memory_mb=self.memory_mb,
                             processes=self.processes, file_mb=self.file_mb, open_files=self.open_files,
                             output_bytes=self.output_bytes, tmp_mb=self.tmp_mb)


@dataclasses.dataclass(frozen=True)
class RewardsConfig:
    """Which rule-based rewards score a completion and how they add up (total = sum of weight * reward)."""

    names: tuple[str, ...] = ("accuracy", "format")  # registered reward names (rl.rewards.REWARDS)
    weights: tuple[float, ...] = (1.0, 1.0)  # R1-Zero: Reward_rule = Reward_acc + Reward_format (R1, Nature)
    language: str = "en"  # target language of the chain of thought and the text around it (R1's language reward)
    max_length: int = 1024  # L_max of DAPO's soft overlong penalty, in completion tokens
    overlong_buffer: int = 256  # L_cache: the penalty ramps from 0 to -1 over the last L_cache tokens (DAPO)
    answer_max_chars: int = 256  # K: a longer extracted answer is no answer (never shortened: rl.rewards.extract)
    code: CodeConfig = dataclasses.field(default_factory=CodeConfig)  # the `code` reward's sandbox

    def __post_init__(self) -> None:
        s = "rewards"
        _require(len(self.names) > 0, s, "names", self.names, "at least one reward")
        _require(all(isinstance(n, str) and n for n in self.names), s, "names", self.names,
                 "a list of reward names")
        _require(len(set(self.names)) == len(self.names), s, "names", self.names, "no duplicates")
        _require(len(self.weights) == len(self.names), s, "weights", self.weights,
                 f"one weight per name ({len(self.names)})")
        _require(all(-MAX_WEIGHT <= w <= MAX_WEIGHT for w in self.weights), s, "weights", self.weights,
                 f"numbers in [-{MAX_WEIGHT:g}, {MAX_WEIGHT:g}]")
        _require(self.language in LANGUAGE_SCRIPTS, s, "language", self.language,
                 f"one of {sorted(LANGUAGE_SCRIPTS)}")
        _require(self.max_length >= 1, s, "max_length", self.max_length, ">= 1")
        _require(0 <= self.overlong_buffer <= self.max_length, s, "overlong_buffer", self.overlong_buffer,
                 "in [0, {max_length}]", max_length=self.max_length)
        # (past the math verifier's cap every longer answer scored 0, whatever this said)
        _require(1 <= self.answer_max_chars <= MAX_ANSWER_CHARS, s, "answer_max_chars", self.answer_max_chars,
                 f"in [1, {MAX_ANSWER_CHARS}] (the math verifier reads answers of at most {MAX_ANSWER_CHARS} "
                 "characters: rl.tasks.math_answer.MAX_ANSWER_CHARS)")


@dataclasses.dataclass(frozen=True)
class PoolConfig:
    """The host-side worker processes that score completions (never the trainer process)."""

    workers: int = 2  # worker processes; each scores one completion at a time
    timeout_s: float = 10.0  # per completion, from when a worker starts it; the hung worker is killed
    batch_deadline_s: float = 600.0  # backstop per batch: whatever is unfinished then scores 0 (timeout)
    max_tasks_per_worker: int = 1000  # a worker is replaced by a fresh process after this many completions
    memory_mb: int = 2048  # address-space limit per worker (RLIMIT_AS); 0: no limit
    import_modules: tuple[str, ...] = ()  # modules imported in every worker, e.g. ones registering rewards
    # GRPO halts after this many steps in a row in which no completion was scored (every item an error, a
    # timeout or a crash: a broken reward or pool, whose zero rewards would train nothing); 0: never
    max_failed_steps: int = 3

    def __post_init__(self) -> None:
        s = "reward_pool"
        _require(1 <= self.workers <= MAX_WORKERS, s, "workers", self.workers, f"in [1, {MAX_WORKERS}]")
        for field, high in (("timeout_s", MAX_SECONDS), ("batch_deadline_s", MAX_DEADLINE_S)):
            _require(MIN_SECONDS <= getattr(self, field) <= high, s, field, getattr(self, field),
                     f"in [{MIN_SECONDS:g}, {high:g}] seconds")
        # past 2^31-1 a worker would never be recycled either: such a value is a typo for 0 or a real count
        _require(0 <= self.max_tasks_per_worker <= INT32_MAX, s, "max_tasks_per_worker", self.max_tasks_per_worker,
                 "in [0, 2^31-1] (0: never recycle)")
        _require(self.memory_mb == 0 or 256 <= self.memory_mb <= MAX_MEMORY_MB, s, "memory_mb", self.memory_mb,
                 f"0 (no limit) or >= 256 (a warmed-up worker maps ~80 MB), at most {MAX_MEMORY_MB} (2^30 MB)")
        _require(type(self.max_failed_steps) is int and 0 <= self.max_failed_steps <= INT32_MAX, s,
                 "max_failed_steps", self.max_failed_steps, "an integer in [0, 2^31-1] (0: never halt)")
        bad = [m for m in self.import_modules if not isinstance(m, str) or not _MODULE.fullmatch(m)]
        _require(not bad, s, "import_modules", list(self.import_modules),
                 f"absolute dotted module names (package.module); not {bad}")
