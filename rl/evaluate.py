"""Evaluation with DeepSeek-R1's protocol: k samples per problem at temperature 0.6, top-p 0.95.

- pass@1: the fraction of correct samples, averaged over problems (R1 reports this, "averaged over k").
- cons@k: the majority answer among the k samples is correct (correct samples vote as one: `majority_correct`;
  a code row's samples vote with their whole programs: `vote_key`).
- pass@k: the unbiased estimator 1 - C(n - c, k) / C(n, k) with n = k samples (Chen et al. 2021).
- by difficulty, mean response length (tokens), format rate.
Held-out problems come from another seed and skip every problem the training source contains (its generated
problems, or its data file's: by prompt, or what the task says makes two prompts one problem:
`Task.problem_key`), keeping the mix of tasks and kinds of problem (`Task.problem_kind`) the held-out seed draws.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from r1jax.errors import UserError
from r1jax.model.tokenizer import TokenizerLike
from r1jax.rl.data import DataConfig
from r1jax.rl.data.pipeline import TaskSource
from r1jax.rl.rewards import RewardPool, RewardsConfig, extract_answer, extract_program
from r1jax.rl.tasks import TASKS
from r1jax.rl.tasks.arithmetic import parse_number
from r1jax.rl.train.config import DEFAULT_REFLECTION_WORDS, EvalConfig
from r1jax.rl.train.rollouts import reflection_rate, sample_and_submit


STALE_READS = 10_000  # held_out_problems stops reading after this many reads in a row found nothing new,
STALE_READS_PER_PROBLEM = 20  # plus this many per problem known (training's and the held-out source's so far)


def held_out_problems(data: DataConfig, cfg: EvalConfig, tasks: Sequence[str] | None = None,
                      left_out: list[str] | None = None,
                      other_files: Sequence[tuple[str, DataConfig]] = (), read_data_file: bool = True,
                      rows_read: Mapping[str, Sequence[dict]] | None = None) -> list[dict]:
    """`cfg.num_problems` problems from `cfg.seed` whose prompts never occur in the training source, in the mix
    of tasks and kinds the held-out seed draws: the i-th held-out problem is of the kind of the eval source's
    i-th problem (`Task.problem_kind`; one kind per task unless it says otherwise), the next unseen one of
    that kind. A kind training has used up (no unseen problem among the source's 50 x `cfg.num_problems`) is
    left out, its turns skipped, and named in `left_out`: skipping seen problems alone filled algebra's level-3
    set with Simplify problems (199 of 200) once training had used up the 190 Expand problems and most Solve
    ones, where it now keeps Solve's and Simplify's shares and names Expand. A task of one kind gets the first
    unseen problems in order, as before. Training on a data file (`data.path`), the file is read once and its
    problems are skipped too (`_training_keys`): a file drawn from the generators' space otherwise leaked into
    the held-out set (20 of 20 held-out arithmetic prompts were rows of such a file). `other_files`: (the
    config field naming it, its data config) of each other file the run trains on (SFT stages' data_path, a
    distill stage's teacher: rl.train.preflight.other_training_files), whose prompts are skipped the same way
    (a cold-start file's worked solutions to held-out problems were trained on, then evaluated). A scan that
    finds nothing new for STALE_READS + STALE_READS_PER_PROBLEM x (problems known) reads in a row fails then,
    unless the problems found make `cfg.num_problems` (a space too small was read to 50 x num_problems before).
    `read_data_file` false: training's own problems are not skipped, data.path's rows (`r1jax eval
    --ignore-missing-training-files`, the file gone) or the generated ones (weights that trained on nothing:
    `r1jax init`, `import-hf`). `rows_read`: a training file's rows already read, by path (`r1jax eval` checks a
    moved file's fingerprint on them: read again, a file changed between the reads passed the check with other
    rows than the ones skipped)."""
    rows_read = rows_read or {}
    if cfg.path is not None:
        return _file_held_out(data, cfg, tasks, other_files, read_data_file, rows_read)
    tasks = list(tasks or data.tasks)
    difficulty = cfg.difficulty or data.difficulty
    seen = _training_keys(data, tasks, rows_read) if read_data_file else set()
    for field, other in other_files:
        seen |= _file_keys(other, tasks, field, rows_read)
    source = TaskSource([data.task(t, difficulty) for t in tasks], cfg.seed, 50 * cfg.num_problems)
    kinds: list[tuple] = []  # the kind of each problem of `source` read so far
    unseen: dict[tuple, collections.deque] = collections.defaultdict(collections.deque)  # not yet taken, by kind
    stale = 0  # reads in a row that found nothing new (a problem training or the source so far had)

    def read_next() -> None:
        nonlocal stale
        problem = source[len(kinds)]
        kinds.append(_kind(problem))
        if _key(problem) not in seen:
            seen.add(_key(problem))
            unseen[kinds[-1]].append(problem)
            stale = 0
            return
        stale += 1
        # the task space looks used up: no later read adds a problem, so unless the ones found already make
        # `cfg.num_problems`, the scan would end in the error below, after 50 x num_problems reads (hours for
        # --num-problems 100000000 at difficulty 1). A space with k of M problems left unread shows none in
        # this many reads with probability ~exp(-k x STALE_READS_PER_PROBLEM): never in practice.
        if stale == STALE_READS + STALE_READS_PER_PROBLEM * len(seen):
            found = len(problems) + sum(len(queue) for queue in unseen.values())
            if found < cfg.num_problems:
                raise _too_small(data, cfg, found)

    problems, exhausted = [], []
    for i in range(len(source)):
        if i == len(kinds):
            read_next()
        while not unseen[kinds[i]] and kinds[i] not in exhausted and len(kinds) < len(source):
            read_next()
        if not unseen[kinds[i]]:  # none left unseen among the whole source
            if kinds[i] not in exhausted:
                exhausted.append(kinds[i])
            continue
        problems.append(unseen[kinds[i]].popleft())
        if len(problems) == cfg.num_problems:
            if left_out is not None:
                left_out += [_kind_name(kind) for kind in exhausted]
            return problems
    raise _too_small(data, cfg, len(problems))


def _file_held_out(data: DataConfig, cfg: EvalConfig, tasks: Sequence[str] | None,
                   other_files: Sequence[tuple[str, DataConfig]], read_data_file: bool,
                   rows_read: Mapping[str, Sequence[dict]]) -> list[dict]:
    """`eval.path`'s first `cfg.num_problems` distinct rows (of `tasks`, when given) whose problem training never
    reads, in the file's order; every one when it holds fewer. A row training reads (data.path's, a generated
    problem, another training file's) is skipped: a test split that shares prompts with its train split
    scored memorised answers."""
    held_out = dataclasses.replace(data, path=cfg.path, fields=data.fields if cfg.fields is None else cfg.fields,
                                   answer_format=cfg.answer_format or data.answer_format)
    try:
        rows = held_out.load_file()
    except UserError as err:
        raise UserError(f"eval.path={cfg.path!r} (the held-out file): {err}") from None
    if tasks:
        rows = [row for row in rows if row["task"] in tasks]
        if not rows:
            raise UserError(f"eval.path={cfg.path!r} holds no row of task {', '.join(tasks)}")
    kinds = sorted({row["task"] for row in rows})
    if not read_data_file:
        seen = set()
    elif data.path is None:  # generated training problems, keyed as each kind's: a row without a task column
        # is read as data.default_task's (math), and the same prompt is the same problem whatever task reads it
        train = TaskSource([data.task(t) for t in data.tasks], data.seed, data.num_problems)
        seen = {(kind, TASKS[kind].problem_key(train[i]["prompt"])) for i in range(len(train)) for kind in kinds}
    else:
        seen = _file_keys(data, kinds, "data.path", rows_read)
    for field, other in other_files:
        seen |= _file_keys(other, kinds, field, rows_read)
    problems = []
    for row in rows:  # a row repeated in the file is one problem (it would count twice in pass@1)
        if _key(row) not in seen:
            seen.add(_key(row))
            problems.append(row)
    if not problems:
        raise UserError(f"eval.path={cfg.path!r}: every one of its {len(rows)} rows is a problem training reads; "
                        "give a held-out file of problems it does not")
    return problems[:cfg.num_problems]


def held_out_file_note(cfg: EvalConfig, rows: int) -> str:
    """The run's line on a held-out file (`eval.path`) of which `rows` were taken: fewer than eval.num_problems
    when the file holds no more that training does not read, which the line then says."""
    taken = (f"all it holds that training does not read: fewer than eval.num_problems={cfg.num_problems}"
             if rows < cfg.num_problems else "its first that training does not read")
    return f"held-out set: {rows} rows of eval.path {cfg.path} ({taken})"


def _too_small(data: DataConfig, cfg: EvalConfig, found: int) -> ValueError:
    used = (f"training's {data.num_problems} generated problems ({', '.join(data.tasks)} at difficulty "
            f"{data.difficulty}: data.num_problems) use it up; " if data.path is None else
            f"the training file data.path={data.path!r} holds its problems; ")
    return ValueError(f"only {found} held-out problems differ from the training data; the task space is "
                      f"too small for eval.num_problems={cfg.num_problems}: {used}raise the difficulty (data/eval), "
                      "add tasks or lower the numbers of problems")


def _training_keys(data: DataConfig, tasks: Sequence[str], rows_read: Mapping[str, Sequence[dict]]) -> set[tuple]:
    """The `_key`s of the problems training reads (its generated problems, or its data file's), for held-out
    problems of `tasks`. A file row is keyed as a problem of each of `tasks`: its task column names the verifier
    that scores it, and a prompt a held-out task generates is the same problem whichever verifier the file
    gives it (a GSM8K-style file reads rows as `math` by default)."""
    if data.path is None:
        train = TaskSource([data.task(t) for t in data.tasks], data.seed, data.num_problems)
        return {_key(train[i]) for i in range(len(train))}
    return _file_keys(data, tasks, "data.path", rows_read)


def _file_keys(data: DataConfig, tasks: Sequence[str], field: str,
               rows_read: Mapping[str, Sequence[dict]]) -> set[tuple]:
    """The `_key`s of a training file's rows (`data.path`, named in errors as the config's `field`; its rows from
    `rows_read` when they were read already)."""
    try:
        rows = rows_read[data.path] if data.path in rows_read else data.load_file()
    except UserError as err:  # `r1jax eval` of a checkpoint whose training file has moved
        raise UserError(f"{field}={data.path!r} (a training file, whose problems the held-out set must "
                        f"skip): {err}") from None
    return {(task, TASKS[task].problem_key(row["prompt"])) for row in rows for task in set(tasks)}


def _kind_name(kind: tuple) -> str:
    return f"{kind[0]}'s {kind[1]}" if kind[1] is not None else kind[0]


def judges(tasks: Sequence[str]) -> tuple[str, ...]:
    """The rewards evaluation figures read: pass@1's (`code` for code problems, `accuracy` for the others) and
    `format_rate`'s."""
    return (*(["accuracy"] if set(tasks) - {"code"} else []), *(["code"] if "code" in tasks else []), "format")


def evaluation_rewards(rewards: RewardsConfig, tasks: Sequence[str]) -> RewardsConfig:
    """`rewards` (its settings: answer length, language, the code sandbox) scoring the judges of `tasks` alone:
    what `r1jax eval` scores with, whatever the checkpoint trained on (`rewards.names=[accuracy]` reported
    format_rate 0, a run without `accuracy` pass@1 0)."""
    names = judges(tasks)
    return dataclasses.replace(rewards, names=names, weights=(1.0,) * len(names))


def missing_judges(rewards: RewardsConfig, tasks: Sequence[str]) -> list[str]:
    """The judges of `tasks` a training run's rewards do not score (its evaluation would read them as 0)."""
    return [name for name in judges(tasks) if name not in rewards.names]


def _key(problem: Mapping) -> tuple:
    """One problem, however its prompt states it (`Task.problem_key`)."""
    return problem["task"], TASKS[problem["task"]].problem_key(problem["prompt"])


def _kind(problem: Mapping) -> tuple:
    """The problem's task and kind of problem (`Task.problem_kind`)."""
    return problem["task"], TASKS[problem["task"]].problem_kind(problem["prompt"])


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (1 <= k <= n, 0 <= c <= n)."""
    if not (1 <= k <= n and 0 <= c <= n):  # k > n read 1.0 for c = 0 (n - c < k), a pass with no correct sample
        raise ValueError(f"pass_at_k: needs 1 <= k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


_REFERENCE = ("the reference",)  # the vote of every correct sample (no answer text is a tuple)


def majority_correct(answers: Sequence[str | None], correct: Sequence[bool]) -> bool:
    """Whether the majority vote over the samples is correct. Every correct sample votes for the reference (the
    task's checker found it equivalent to the reference: "136", "136.0" and "$136$" are one vote of three), every
    other sample for its answer as written (whitespace aside), a sample with neither does not vote; ties go to
    the earliest sample's vote."""
    keys = [_REFERENCE if ok else answer for answer, ok in zip(answers, correct)]
    votes = collections.Counter(key for key in keys if key)
    if not votes:
        return False
    top = max(votes.values())
    return next(key for key in keys if key and votes[key] == top) is _REFERENCE


def summarize(problems, texts, lengths, results, k: int, answer_max_chars: int = 256,
              reflection_words: Sequence[str] = DEFAULT_REFLECTION_WORDS) -> dict:
    """Eval figures from k completions per problem (prompt-major rows)."""
    per_problem, by_difficulty = [], collections.defaultdict(list)
    for i, problem in enumerate(problems):
        rows = range(i * k, (i + 1) * k)
        judge = "code" if problem.get("task") == "code" else "accuracy"  # code: every test passed
        correct = [results[r].rewards.get(judge, 0.0) >= 1.0 for r in rows]
        answers = [vote_key(texts[r], problem.get("task"), answer_max_chars) for r in rows]
        entry = {"pass@1": float(np.mean(correct)), "cons": majority_correct(answers, correct),
                 "pass@k": pass_at_k(k, sum(correct), k)}
        per_problem.append(entry)
        by_difficulty[str(problem.get("difficulty", 0))].append(entry["pass@1"])
    return {
        "pass@1": float(np.mean([e["pass@1"] for e in per_problem])),
        f"cons@{k}": float(np.mean([e["cons"] for e in per_problem])),
        f"pass@{k}": float(np.mean([e["pass@k"] for e in per_problem])),
        "k": k, "n_problems": len(problems),
        "accuracy_by_difficulty": {d: float(np.mean(v)) for d, v in sorted(by_difficulty.items())},
        "response_length": float(np.mean(lengths)),
        "format_rate": float(np.mean([r.rewards.get("format", 0.0) >= 1.0 for r in results])),
        "reflection_rate": reflection_rate(texts, reflection_words),
        "pool_failures": sum(r.status != "ok" for r in results),
    }


def vote_key(text: str, task: str | None, answer_max_chars: int = 256) -> str | None:
    """What a sample that is not correct votes for in cons@k (None: no vote). A code row's: its program whole, as
    the code reward reads it (rl.rewards.extract_program; no length cap: programs of more than
    `answer_max_chars` characters cast no vote, so one correct sample outvoted three identical wrong ones), line
    by line without trailing whitespace or blank lines, indentation kept (Python's syntax). Any other row's:
    its final answer (at most `answer_max_chars` characters, as the accuracy reward reads it) without
    whitespace, or, when it is a numeral (rl.tasks.arithmetic.parse_number, which evaluates nothing), its
    value: correct samples vote as one bloc (`majority_correct`), so wrong ones that are one number written
    differently must too, or cons@k leans to the reference. Other equal wrong answers written differently
    ("\\frac{1}{2}" and "1/2") still split their votes."""
    if task == "code":
        program = extract_program(text)
        lines = [line.rstrip() for line in (program or "").splitlines() if line.strip()]
        return "\n".join(lines) or None
    answer = extract_answer(text, answer_max_chars)
    if answer is None:
        return None
    number = parse_number(answer)  # a numeral votes by its value: "135", "135.0", "$135$" alike
    return "".join(answer.split()) if number is None else f"the number {number}"


def evaluate(sampler, states, tokenizer: TokenizerLike, template: str, problems: Sequence[dict], pool: RewardPool,
             cfg: EvalConfig, max_new_tokens: int, answer_max_chars: int = 256,
             template_vars: Mapping[str, Any] | None = None,
             progress: Callable[[int], None] | None = None) -> tuple[dict, list[dict]]:
    """(figures, sample rows) for `problems` under the policy `states`, prompted in format `template` (with
    the chat template's `template_vars`): `cfg.batch_size` problems per sampler call, each call's
    completions scored by the pool while the next one generates. `progress`, when given, is told after each
    sampler call how many problems have been sampled so far."""
    chunks = []
    for start in range(0, len(problems), cfg.batch_size):
        sampled = sample_and_submit(sampler, states, tokenizer, template, problems[start:start + cfg.batch_size],
                                    pool, cfg.samples, template_vars, temperature=cfg.temperature, top_p=cfg.top_p,
                                    top_k=cfg.top_k, max_new_tokens=max_new_tokens)
        chunks.append((sampled.texts, sampled.items, sampled.pending))  # not the rollout: free its arrays
        if progress is not None:
            progress(min(start + cfg.batch_size, len(problems)))
    texts = [text for chunk_texts, _, _ in chunks for text in chunk_texts]
    lengths = [item.length for _, items, _ in chunks for item in items]
    results = [result for _, _, pending in chunks for result in pool.collect(pending)]
    figures = summarize(problems, texts, lengths, results, cfg.samples, answer_max_chars, cfg.reflection_words)
    samples = [{"prompt": problems[i // cfg.samples]["prompt"], "answer": problems[i // cfg.samples]["answer"],
                "completion": texts[i], "rewards": results[i].rewards, "status": results[i].status}
               for i in range(min(len(texts), cfg.num_logged_samples))]
    return figures, samples
