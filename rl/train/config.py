"""Trainer configs: stages, evaluation, checkpointing (typed, frozen, validated)."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Dict, Optional

from r1jax.errors import UserError
from r1jax.rl.config_checks import INT32_MAX, check_bool, check_sampling, check_temperature
from r1jax.rl.data.answers import ANSWER_FORMATS
from r1jax.rl.data.records import check_field_mapping

STAGE_KINDS = ("sft", "grpo", "rejection_sampling", "distill")
# readability filters of rejection sampling (rl.train.filters), applied in the order a stage lists them
REJECTION_FILTERS = ("format", "language", "length", "repetition", "code_block", "paragraph")
# the "paragraph" filter's default bound (R1 filters "long paragraphs" and gives no number): a written paragraph
# runs 100-200 words, so 300 (about 400 tokens) between blank lines is a wall of text, while a thought that
# breaks its steps into paragraphs keeps any length
MAX_PARAGRAPH_WORDS = 300
DEFAULT_MAX_SEQUENCE_LENGTH = 4096  # an SFT row's tokens (stages[X].max_sequence_length)
MIN_SEQUENCE_LENGTH = 32  # the smallest SFT bucket
# R1's "aha moment": words of self-reflection, counted per completion (whole words, any case)
DEFAULT_REFLECTION_WORDS = ("wait", "verify", "check", "re-examine", "recheck", "reconsider", "double-check",
                            "mistake", "however", "actually")
MAX_EVAL_PROBLEMS = 1_000_000  # held-out problems (each sampled eval.samples times; R1's sets: <= ~1,000)
MAX_EVAL_SAMPLES = 1024  # k per problem (R1: 64 for AIME); 10^8 ran for minutes before its first progress line
STAGE_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # a stage's name names its files (samples/NAME/, NAME.jsonl)
_REJECTION = ("rejection_sampling",)
# the stage settings with a default that only some kinds read, and what another kind reads in their place
STAGE_READERS = {
    "batch_size": (("sft", "distill", "rejection_sampling"),
                   {"grpo": "grpo.prompts_per_step prompts x grpo.group_size samples make its batch"}),
    "max_sequence_length": (("sft", "distill"), {"rejection_sampling": "the sft or distill stage that trains on its "
                                                 "samples bounds them with its own max_sequence_length"}),
    "samples_per_prompt": (_REJECTION, {"grpo": "grpo.group_size samples each prompt"}),
    **{key: (_REJECTION, {}) for key in ("reward_threshold", "filters", "max_repetition", "max_paragraph_words",
                                         "correct_only")},
}


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """One stage of a run. Each starts from the previous stage's final checkpoint unless `init_from`."""

    name: str = "grpo"
    kind: str = "grpo"  # sft | grpo | rejection_sampling | distill
    steps: int = 100  # optimizer steps (sft, grpo, distill) or sampling rounds (rejection_sampling)
    lr: Optional[float] = None  # overrides optimizer.lr for this stage
    batch_size: int = 32  # sft/distill: sequences per step; rejection_sampling: prompts per round
    init_from: Optional[str] = None  # an r1jax checkpoint or a Hugging Face directory
    data_path: Optional[str] = None  # sft: a JSONL of prompt/solution (default: task solutions); rejection_sampling:
    # the prompts it samples (default: data.path, else the tasks)
    # rejection sampling (R1 §2.3.3): K samples per prompt, keep those with reward >= threshold
    samples_per_prompt: int = 4
    # sft/distill: the longest row in tokens (prompt + solution + eos; never truncated), the largest of the
    # power-of-two buckets rows are padded to (rl.train.sft.sequence_buckets)
    max_sequence_length: int = DEFAULT_MAX_SEQUENCE_LENGTH
    reward_threshold: float = 2.0
    max_new_tokens: Optional[int] = None  # default: sampling.max_new_tokens
    temperature: Optional[float] = None  # rejection_sampling: default sampling.temperature
    filters: tuple[str, ...] = REJECTION_FILTERS  # readability filters a kept sample must pass
    max_repetition: float = 0.5  # "repetition" filter: at most this share of repeated word 4-grams
    max_paragraph_words: int = MAX_PARAGRAPH_WORDS  # "paragraph" filter: words per paragraph of the thought
    # keep only correct samples: full `accuracy` (`code` for code rows) when rewards.names scores it (R1); false:
    # the threshold alone decides (a wrong answer in good format reaches 2.0 with accuracy + format + language)
    correct_only: bool = True
    teacher: Optional[str] = None  # distill: the stage whose samples (or a JSONL) the student learns from
    student_overrides: tuple[str, ...] = ()  # distill: model overrides of the student ("hidden_size=64")

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not STAGE_NAME.fullmatch(self.name) or self.name in (".", ".."):
            raise UserError(f"stages: name={self.name!r}: expected a non-empty name of letters, digits, '_', '.' "
                            "and '-' (not '.' or '..'): it names the stage's files in the run directory")
        where = f"stages[{self.name}]"
        if self.kind not in STAGE_KINDS:
            raise UserError(f"{where}.kind={self.kind!r}: choose one of {', '.join(STAGE_KINDS)}")
        if not 0 <= self.steps <= INT32_MAX:  # the schedule counts updates in int32 on the device
            raise UserError(f"{where}.steps={self.steps}: must be in [0, 2^31-1]")
        if self.batch_size < 1:
            raise UserError(f"{where}.batch_size={self.batch_size}: must be >= 1")
        if self.lr is not None and self.lr <= 0:
            raise UserError(f"{where}.lr={self.lr}: must be > 0")
        if self.samples_per_prompt < 1:
            raise UserError(f"{where}.samples_per_prompt={self.samples_per_prompt}: must be >= 1")
        if self.max_new_tokens is not None and not 1 <= self.max_new_tokens <= INT32_MAX:
            raise UserError(f"{where}.max_new_tokens={self.max_new_tokens}: must be null (sampling.max_new_tokens) "
                            "or in [1, 2^31-1]")
        unknown = sorted(set(self.filters) - set(REJECTION_FILTERS))
        if unknown:
            raise UserError(f"{where}.filters: unknown {unknown}; choose from {', '.join(REJECTION_FILTERS)}")
        if not 0 < self.max_repetition <= 1:
            raise UserError(f"{where}.max_repetition={self.max_repetition}: must be in (0, 1]")
        if not MIN_SEQUENCE_LENGTH <= self.max_sequence_length <= INT32_MAX:
            raise UserError(f"{where}.max_sequence_length={self.max_sequence_length}: must be in "
                            f"[{MIN_SEQUENCE_LENGTH}, 2^31-1]")
        if not 1 <= self.max_paragraph_words <= INT32_MAX:
            raise UserError(f"{where}.max_paragraph_words={self.max_paragraph_words}: must be >= 1")
        check_bool(f"{where}.correct_only", self.correct_only)
        if self.temperature is not None:
            check_temperature(f"{where}.temperature", self.temperature)
        if self.kind == "distill" and not self.teacher:
            raise UserError(f"{where}.teacher: a distill stage needs the rejection_sampling stage (or a JSONL "
                            f"of prompt/solution rows) whose samples the student learns from")
        own = [key for key in ("max_new_tokens", "temperature") if getattr(self, key) is not None]
        if own and self.kind != "rejection_sampling":  # read by nothing else: a grpo stage's was ignored
            instead = ("samples with grpo.temperature and sampling.max_new_tokens" if self.kind == "grpo"
                       else "samples nothing")
            raise UserError(f"{where}.{own[0]}: only a rejection_sampling stage samples with its own; a {self.kind} "
                            f"stage {instead}")
        if self.student_overrides and self.kind != "distill":
            raise UserError(f"{where}.student_overrides: only a distill stage changes the model")
        if self.data_path is not None and self.kind not in ("sft", "rejection_sampling"):  # ignored: a grpo stage
            instead = "samples data.path's prompts" if self.kind == "grpo" else "learns from its teacher"
            raise UserError(f"{where}.data_path: only sft and rejection_sampling stages read a file of their own; a "
                            f"{self.kind} stage {instead}")
        if self.teacher is not None and self.kind != "distill":
            raise UserError(f"{where}.teacher: only a distill stage learns from a teacher (an sft stage reads its "
                            "data_path)")

    def check_settings_read(self) -> None:
        """UserError for a setting (STAGE_READERS) that this stage's kind never reads, given another value than
        its default: `stages.1.batch_size=64` on a grpo stage trained on grpo.prompts_per_step's batch, saying
        nothing. A run's start checks its stages so (rl.train.preflight); a checkpoint's config, which generate
        and eval read, is not refused for it. A resume reads the run's saved config.yaml, which no override can
        drop a key from: the message gives the default to set instead."""
        for key, (kinds, instead) in STAGE_READERS.items():
            value = getattr(self, key)
            if self.kind not in kinds and value != STAGE_DEFAULTS[key]:
                said = instead.get(self.kind, f"a stage of kind {self.kind} never reads it")
                readers = " and ".join([", ".join(kinds[:-1]), kinds[-1]] if len(kinds) > 1 else kinds)
                default = STAGE_DEFAULTS[key]
                default = json.dumps(list(default) if isinstance(default, tuple) else default)  # as an override
                raise UserError(f"stages[{self.name}].{key}={value!r}: only {readers} stages read it; "
                                f"{said} (drop the setting; to resume a run whose config.yaml holds it, set it to "
                                f"its default, {default})")

    def check_paths(self) -> None:
        """UserError for an empty `data_path` or `init_from` (`init_from: ""`): read as unset, the stage trained
        on data.path's rows or from the previous stage without a word. A run's start checks its stages so
        (rl.train.preflight), not every load: a checkpoint's config that holds one still evaluates."""
        for key in ("data_path", "init_from"):
            value = getattr(self, key)
            if value is not None and not value.strip():
                raise UserError(f"stages[{self.name}].{key}={value!r}: expected a path (or null: "
                                + ("data.path, else the tasks" if key == "data_path" else "the previous stage's "
                                   "final checkpoint, or a fresh policy for the first stage") + ")")

    def new_tokens(self, sampling_max_new_tokens: int) -> int:
        """The completion budget the stage samples with: a rejection_sampling stage's own `max_new_tokens`
        when set, else `sampling.max_new_tokens` (what GRPO samples with)."""
        own = self.max_new_tokens if self.kind == "rejection_sampling" else None
        return own or sampling_max_new_tokens


STAGE_DEFAULTS = {field.name: field.default for field in dataclasses.fields(StageConfig)}


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """R1's protocol: pass@1 averaged over k samples at temperature 0.6, top-p 0.95; cons@k by vote."""

    num_problems: int = 200  # held-out problems, never seen in training
    samples: int = 4  # k
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0  # 0: no top-k filter (R1's protocol uses none)
    every: int = 0  # GRPO steps between evaluations; 0: only at the end of each stage
    seed: int = 1_000_003  # held-out generation seed (problems equal to training prompts are skipped)
    difficulty: Optional[int] = None  # default: data.difficulty
    batch_size: int = 64  # prompts per sampler call
    num_logged_samples: int = 16  # completions written to samples/ per evaluation
    reflection_words: tuple[str, ...] = DEFAULT_REFLECTION_WORDS  # counted in GRPO rows and evaluations
    # a held-out file (JSONL, JSON or Parquet; e.g. GSM8K's test split) in place of generated problems: its first
    # num_problems rows that training never reads, read through data's `fields`, `answer_format` and
    # `default_task` unless these two say otherwise (rl.evaluate.held_out_problems)
    path: Optional[str] = None
    fields: Optional[Dict[str, str]] = None  # default: data.fields
    answer_format: Optional[str] = None  # default: data.answer_format

    def __post_init__(self) -> None:
        if self.path is not None and (not isinstance(self.path, str) or not self.path.strip()):
            raise UserError(f"eval.path={self.path!r}: expected a file's path (or null: generated problems)")
        if self.path is None and (self.fields is not None or self.answer_format is not None):
            raise UserError("eval.fields and eval.answer_format describe a held-out file: set eval.path too")
        if self.path is not None and self.difficulty is not None:
            raise UserError(f"eval.difficulty={self.difficulty} picks generated held-out problems, and "
                            f"eval.path={self.path!r} replaces them (a file's rows carry no difficulty): drop one")
        check_field_mapping(self.fields or {}, "eval.fields", "the held-out file")
        if self.answer_format is not None and self.answer_format not in ANSWER_FORMATS:
            raise UserError(f"eval.answer_format={self.answer_format!r}: expected one of {', '.join(ANSWER_FORMATS)} "
                            "(or null: data.answer_format)")
        if self.num_problems < 1 or self.samples < 1 or self.batch_size < 1:
            raise UserError("eval.num_problems, eval.samples and eval.batch_size must be >= 1")
        if self.num_problems > MAX_EVAL_PROBLEMS:
            raise UserError(f"eval.num_problems={self.num_problems}: must be at most {MAX_EVAL_PROBLEMS:,}")
        if self.samples > MAX_EVAL_SAMPLES:
            raise UserError(f"eval.samples={self.samples}: must be at most {MAX_EVAL_SAMPLES:,}")
        if self.difficulty is not None and not 1 <= self.difficulty <= 5:
            raise UserError(f"eval.difficulty={self.difficulty}: expected null (data.difficulty) or 1..5")
        if not self.reflection_words or not all(isinstance(w, str) and w.strip() for w in self.reflection_words):
            raise UserError(f"eval.reflection_words={list(self.reflection_words)}: expected a non-empty list of "
                            "non-empty words")
        check_sampling("eval", self.temperature, self.top_p, self.top_k)
        if self.every < 0:
            raise UserError(f"eval.every={self.every}: expected >= 0 (0: only at the end of each stage)")
        if self.num_logged_samples < 0:
            raise UserError(f"eval.num_logged_samples={self.num_logged_samples}: expected >= 0 (0: none logged)")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every: int = 50  # steps between checkpoints (and at the end of every stage)
    keep: int = 3  # latest checkpoints kept
    keep_best: int = 1  # plus the best by eval/pass@1
    async_save: bool = True

    def __post_init__(self) -> None:
        if self.every < 1 or self.keep < 1 or self.keep_best < 0:
            raise UserError("checkpoint.every and checkpoint.keep must be >= 1, checkpoint.keep_best >= 0")
        check_bool("checkpoint.async_save", self.async_save)
