"""Evaluation figures against hand counts: pass@1 averaged over k, cons@k (ties to the earliest answer,
missing answers never vote), unbiased pass@k against an independent estimator, accuracy by difficulty,
format rate and pool failures; and `evaluate` keeps every completion with its own problem across chunks."""

import dataclasses
import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from r1jax.rl.evaluate import evaluate, majority_correct, pass_at_k, summarize, vote_key
from r1jax.rl.rewards import ScoreResult, extract_answer
from r1jax.rl.sampler import Rollout
from r1jax.rl.train.config import EvalConfig


def answer_text(answer):
    """A completion whose extracted answer is `answer` (None: a completion without an answer)."""
    if answer is None:
        return "<think>I give up</think>"
    return f"<think>working</think> <answer>{answer}</answer>"


def ok(accuracy, fmt=1.0):
    return ScoreResult(rewards={"accuracy": accuracy, "format": fmt}, total=accuracy + fmt, status="ok")


FAILED = ScoreResult(rewards={"accuracy": 0.0, "format": 0.0}, total=0.0, status="timeout")

# k = 4 samples per problem: (difficulty, [(answer in the completion, accuracy reward, format reward)] * 4)
CASES = [
    # P0: "7" wins 2-1 (the missing answer does not vote) and is correct; pass@1 2/4
    (1, [("7", 1.0, 1.0), ("7", 1.0, 1.0), ("3", 0.0, 1.0), (None, 0.0, 0.0)]),
    # P1: a 2-2 tie, the earliest answer "4" is wrong: cons false although half the samples are right; a
    # format reward of 0.5 is not a well-formatted row
    (1, [("4", 0.0, 1.0), ("5", 1.0, 1.0), ("4", 0.0, 1.0), ("5", 1.0, 0.5)]),
    # P2: the same votes in the other order: the earliest, "5", is right
    (2, [("5", 1.0, 1.0), ("4", 0.0, 1.0), ("5", 1.0, 1.0), ("4", 0.0, 1.0)]),
    # P3: three samples without an answer (one an empty <answer>): the single vote decides; an accuracy of
    # 0.99 is not correct
    (2, [(None, 0.0, 0.0), ("", 0.0, 1.0), ("1 2", 1.0, 1.0), ("13", 0.99, 1.0)]),
    # P4: nothing answered: cons false, pass@k 0
    (3, [(None, 0.0, 0.0)] * 4),
    # P5: whitespace is not part of an answer: "2 0" and "20" are one answer with 2 votes, tying "21" (2
    # votes); "20" came first and is right. Without the normalisation "21" would win alone.
    (3, [("2 0", 1.0, 1.0), ("21", 0.0, 1.0), ("20", 1.0, 1.0), ("21", 0.0, 1.0)]),
]


def made_up_rows():
    problems = [{"prompt": f"p{i}", "answer": "x", "difficulty": d} for i, (d, _) in enumerate(CASES)]
    texts = [answer_text(a) for _, samples in CASES for a, _, _ in samples]
    results = [ok(acc, fmt) for _, samples in CASES for _, acc, fmt in samples]
    lengths = list(range(1, len(texts) + 1))
    return problems, texts, lengths, results


def test_summary_figures_equal_hand_counts():
    problems, texts, lengths, results = made_up_rows()
    results[23] = FAILED  # P5's last sample timed out: scores 0 everywhere, counted as a pool failure
    figures = summarize(problems, texts, lengths, results, k=4, reflection_words=("working",))
    # correct samples per problem: 2, 2, 2, 1, 0, 2 of 4 (P5's timed-out sample was wrong anyway)
    assert figures["pass@1"] == pytest.approx((2 + 2 + 2 + 1 + 0 + 2) / 4 / 6)
    assert figures["cons@4"] == pytest.approx(4 / 6)  # P0, P2, P3, P5
    assert figures["pass@4"] == pytest.approx(5 / 6)  # every problem with a correct sample: all but P4
    assert figures["accuracy_by_difficulty"] == pytest.approx({"1": (2 / 4 + 2 / 4) / 2,
                                                               "2": (2 / 4 + 1 / 4) / 2,
                                                               "3": (0 / 4 + 2 / 4) / 2})
    # format reward >= 1 in 3 + 3 + 4 + 3 + 0 + 3 of 24 rows (P5's fourth row failed)
    assert figures["format_rate"] == pytest.approx(16 / 24)
    assert figures["response_length"] == pytest.approx(np.mean(range(1, 25)))
    assert figures["reflection_rate"] == pytest.approx(18 / 24)  # "working" in the 18 answered rows
    assert figures["pool_failures"] == 1 and figures["k"] == 4 and figures["n_problems"] == 6


def test_the_format_rate_counts_every_sample_of_a_problem():
    """Every first sample badly formatted, every other well: 18 of 24 (the table above gives the same rate
    from all samples or from the first of each problem, so it could not tell them apart)."""
    problems, texts, lengths, results = made_up_rows()
    results = [ok(r.rewards["accuracy"], 0.0 if i % 4 == 0 else 1.0) for i, r in enumerate(results)]
    assert summarize(problems, texts, lengths, results, k=4, reflection_words=())["format_rate"] == 18 / 24


def test_a_partial_format_reward_is_not_a_well_formatted_row():
    problems, texts, lengths, results = made_up_rows()
    results = [ok(r.rewards["accuracy"], 0.75 if i % 2 else 1.0) for i, r in enumerate(results)]
    assert summarize(problems, texts, lengths, results, k=4, reflection_words=())["format_rate"] == 12 / 24


def test_summary_with_odd_k_names_its_figures_and_defaults_difficulty_to_zero():
    problems = [{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": "2"}]
    texts = [answer_text(a) for a in ("1", "9", "9", "2", None, None)]
    results = [ok(1.0), ok(0.0), ok(0.0), ok(1.0), ok(0.0, 0.0), ok(0.0, 0.0)]
    figures = summarize(problems, texts, [3] * 6, results, k=3)
    assert figures["pass@1"] == pytest.approx((1 / 3 + 1 / 3) / 2)
    assert figures["cons@3"] == pytest.approx(1 / 2)  # "9" outvotes "1"; "2" wins alone
    assert figures["pass@3"] == pytest.approx(1.0)
    assert figures["accuracy_by_difficulty"] == pytest.approx({"0": 1 / 3})


@pytest.mark.parametrize("answers,correct,expected", [
    (["4", "5", "4", "5"], [False, True, False, True], False),  # tie: the earliest answer, "4"
    (["5", "4", "4", "5"], [True, False, False, True], True),  # tie: the earliest answer, "5"
    ([None, None, None, "5"], [False, False, False, True], True),  # missing answers do not vote
    ([None, "", None], [False, False, False], False),  # no votes at all: not correct
    (["4", "4", "5"], [False, False, True], False),  # the majority, not any correct sample
    (["5", "5", "4"], [True, False, False], True),  # a tie of three votes: the correct sample's is earliest
    # correct samples vote as one, however they are written (the task's checker accepted each): 3 against 2
    (["136", "136.0", "$136$", "7", "7"], [True, True, True, False, False], True),
    (["(3+5)*2", "2*(3+5)", "(5+3)*2", "16", "16"], [True, True, True, False, False], True),
    # answers the checker refused never count as right, even when they read alike ("1 2" is not 12)
    (["12", "12", "12"], [False, False, True], False),
])
def test_majority_vote_follows_the_documented_tie_rule(answers, correct, expected):
    assert majority_correct(answers, correct) is expected


def test_wrong_answers_that_are_one_number_vote_together_as_the_correct_ones_do():
    # 3 of 5 samples answer 135 in three spellings, 2 the reference 136: the majority is wrong (it counted
    # 1 + 1 + 1 against a bloc of 2 before)
    problems = [{"task": "math", "prompt": "p", "answer": "136"}]
    texts = [answer_text(a) for a in ("135", "135.0", "$135$", "136", "136")]
    figures = summarize(problems, texts, [3] * 5, [ok(0.0), ok(0.0), ok(0.0), ok(1.0), ok(1.0)], k=5)
    assert figures["cons@5"] == 0.0 and figures["pass@1"] == pytest.approx(0.4)
    keys = {vote_key(answer_text(a), "math") for a in ("135", "135.0", "$135$", " 135 ", "1,35", "\\boxed{135}")}
    assert len(keys) == 2  # "1,35" is no thousands grouping: not 135
    assert vote_key(answer_text("0.50"), "math") == vote_key(answer_text("0.5"), "math") != \
        vote_key(answer_text("1/2"), "math")  # expressions are not evaluated
    assert vote_key(answer_text("x + 1"), "math") == "x+1" and vote_key("no answer", "math") is None


def chen_pass_at_k(n, c, k):
    """Chen et al. 2021's estimator 1 - C(n - c, k) / C(n, k), exact."""
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def subsets_with_a_correct_sample(n, c, k):
    """The definition: the fraction of the k-subsets of n samples (c of them correct) with a correct one."""
    hits = [any(i < c for i in subset) for subset in itertools.combinations(range(n), k)]
    return Fraction(sum(hits), len(hits))


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_unbiased_pass_at_k_equals_chen_estimator_and_subset_count(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            exact = chen_pass_at_k(n, c, k)
            assert exact == subsets_with_a_correct_sample(n, c, k)
            assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12, abs=1e-15), (n, c, k)
    assert pass_at_k(100, 3, 10) == pytest.approx(float(chen_pass_at_k(100, 3, 10)), rel=1e-12)


@pytest.mark.parametrize("n,c,k", [(2, 0, 3), (4, 5, 2), (4, -1, 2), (4, 1, 0)])
def test_pass_at_k_refuses_k_past_n_and_a_correct_count_outside_0_to_n(n, c, k):
    """k > n samples with none correct read pass@k = 1.0 (n - c < k), c > n read 1.0 too."""
    with pytest.raises(ValueError, match=rf"n={n}, c={c}, k={k}"):
        pass_at_k(n, c, k)


class CharTokenizer:
    """One id per character (offset past the control ids); enough for `evaluate`'s encode and decode."""

    eos_id, pad_id, eos_ids = 2, 3, (2,)

    def encode(self, text, add_bos=False):
        return [1] * add_bos + [ord(ch) + 8 for ch in text]

    def decode(self, ids):
        return "".join(chr(i - 8) for i in ids)


class ScriptedSampler:
    """Answers problem i's prompt correctly in its first `right[i]` samples and with "wrong" after that,
    reading the problem back from the prompt ids; records every call's options."""

    def __init__(self, tokenizer, problems, right):
        self.tokenizer, self.calls = tokenizer, []
        self.by_prompt = {p["prompt"]: (p["answer"], r) for p, r in zip(problems, right)}

    def generate(self, states, prompts, samples, **options):
        self.calls.append({"prompts": len(prompts), "samples": samples, **options})
        texts = []
        for ids in prompts:
            prompt = self.tokenizer.decode(ids[1:]).split("User: ")[1].split("\n")[0]
            answer, right = self.by_prompt[prompt]
            texts += [answer_text(answer if g < right else "wrong") for g in range(samples)]
        ids = [self.tokenizer.encode(t) + [self.tokenizer.eos_id] for t in texts]
        width = max(map(len, ids))
        completion = np.array([row + [0] * (width - len(row)) for row in ids], np.int32)
        prompt_cols = np.ones((len(texts), 1), np.int32)
        return Rollout(tokens_BT=np.concatenate([prompt_cols, completion], 1), valid_BT=None, positions_BT=None,
                       logprobs_BN=np.zeros(completion.shape, np.float32),
                       lengths_B=np.array([len(r) for r in ids], np.int32), experts_LBTK=None, steps=None)


class ExactMatchPool:
    """Accuracy 1 when the completion's answer is the reference it was submitted with (scored on collect, as
    the real pool returns a batch's results in submission order)."""

    def submit(self, items):
        return list(items)

    def collect(self, pending):
        return [ok(float(extract_answer(i.completion) == i.reference)) for i in pending]


def test_evaluate_scores_every_completion_against_its_own_problem_across_chunks():
    problems = [{"prompt": f"Compute {i}+{i}", "answer": str(2 * i), "task": "arithmetic", "difficulty": 1 + i % 2}
                for i in range(5)]
    right = [3, 0, 1, 2, 3]  # correct samples of 3 per problem, different for each so a shift shows
    tokenizer = CharTokenizer()
    sampler = ScriptedSampler(tokenizer, problems, right)
    cfg = EvalConfig(num_problems=5, samples=3, batch_size=2, temperature=0.7, top_p=0.8, num_logged_samples=4)
    figures, samples = evaluate(sampler, None, tokenizer, "chat", problems, ExactMatchPool(), cfg,
                                max_new_tokens=32)
    assert [c["prompts"] for c in sampler.calls] == [2, 2, 1]  # batch_size prompts per sampler call
    assert all(c["samples"] == 3 and c["temperature"] == 0.7 and c["top_p"] == 0.8 for c in sampler.calls)
    assert figures["pass@1"] == pytest.approx(sum(right) / 3 / 5)
    assert figures["cons@3"] == pytest.approx(3 / 5)  # the majority is right where right >= 2
    assert figures["pass@3"] == pytest.approx(4 / 5)
    assert figures["accuracy_by_difficulty"] == pytest.approx({"1": (3 + 1 + 3) / 3 / 3, "2": (0 + 2) / 3 / 2})
    assert [s["prompt"] for s in samples] == ["Compute 0+0"] * 3 + ["Compute 1+1"]
    assert [s["answer"] for s in samples] == ["0"] * 3 + ["2"]  # each row's own problem's reference
    assert [s["rewards"]["accuracy"] for s in samples] == [1.0, 1.0, 1.0, 0.0]


def test_code_problems_are_judged_by_the_code_reward():
    problems = [{"prompt": "p", "answer": "", "task": "code", "difficulty": 1},
                {"prompt": "q", "answer": "7", "task": "arithmetic", "difficulty": 1}]
    texts = [answer_text("def f(x): return x")] * 2 + [answer_text("7")] * 2
    code = [ScoreResult(rewards={"accuracy": 0.0, "code": c, "format": 1.0}, total=c, status="ok") for c in (1.0, 0.5)]
    figures = summarize(problems, texts, [3] * 4, code + [ok(1.0), ok(0.0)], k=2)
    assert figures["accuracy_by_difficulty"] == {"1": 0.5}  # code: 1 of 2 (0.5 passed half the tests)
    assert figures["pass@1"] == 0.5 and figures["pass@2"] == 1.0


LONG = "def f(x):\n" + "    y = x  # a comment that makes the program longer than 256 characters\n" * 5


def code_result(passed):
    return ScoreResult(rewards={"accuracy": 0.0, "code": passed, "format": 1.0}, total=passed, status="ok")


def test_code_answers_vote_with_their_whole_programs():
    """Code answers were read as final answers of at most 256 characters: a longer program cast no vote, so one
    correct sample outvoted three identical wrong ones; now a program votes whole (as the code reward reads it),
    trailing whitespace and blank lines aside, indentation kept."""
    wrong_a, wrong_b = LONG + "    return -x\n", LONG + "    return 2 * x\n"  # alike in their first 300 chars
    wrong_a_spaced = wrong_a.replace("\n", "   \n\n")  # trailing spaces and blank lines: the same vote
    indented = "def f(x):\n    if x:\n        return -x\n    return x\n" + "# filler comment line\n" * 12
    dedented = indented.replace("        return -x", "    return -x")  # another program
    problems = [{"prompt": "p", "answer": "", "task": "code"}, {"prompt": "q", "answer": "", "task": "code"}]
    texts = [answer_text(p) for p in ("def f(x): return x", wrong_a, wrong_a_spaced, wrong_b,
                                      indented, "def f(x): return x", dedented, "def f(x): return x")]
    results = [code_result(c) for c in (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0)]
    assert min(len(p) for p in (wrong_a, wrong_b, indented)) > 256
    # P0: wrong_a 2 votes beat the reference's 1 (wrong_b is a third answer); P1: the reference's 2 votes win
    # over two programs that differ in indentation alone (one vote each)
    assert summarize(problems, texts, [3] * 8, results, k=4)["cons@4"] == 0.5


def test_evaluate_tells_its_progress_after_each_sampler_call():
    problems = [{"prompt": f"Compute {i}+{i}", "answer": str(2 * i), "task": "arithmetic"} for i in range(5)]
    tokenizer = CharTokenizer()
    told = []
    cfg = EvalConfig(num_problems=5, samples=2, batch_size=2)
    evaluate(ScriptedSampler(tokenizer, problems, [1] * 5), None, tokenizer, "chat", problems, ExactMatchPool(), cfg,
             max_new_tokens=32, progress=told.append)
    assert told == [2, 4, 5]  # problems sampled after each of the three calls


def test_response_length_is_the_mean_not_the_median_of_skewed_lengths():
    # R1-style lengths are long-tailed: three short rows and one at the budget. Mean 28, median 4.
    problems = [{"prompt": "p", "answer": "1"}]
    texts = [answer_text("1")] * 4
    figures = summarize(problems, texts, [4, 4, 4, 100], [ok(1.0)] * 4, k=4)
    assert figures["response_length"] == pytest.approx((4 + 4 + 4 + 100) / 4)


@pytest.mark.parametrize("status", ["timeout", "crashed", "error"])
def test_every_failed_status_counts_as_a_pool_failure(status):
    # rl.rewards.pool.STATUSES: any status but "ok" is a failed item that scored 0 on every reward
    failed = dataclasses.replace(FAILED, status=status)
    problems = [{"prompt": "p", "answer": "1"}]
    figures = summarize(problems, [answer_text("1")] * 2, [3, 3], [ok(1.0), failed], k=2)
    assert figures["pool_failures"] == 1


@pytest.mark.parametrize("eval_difficulty,expected", [(3, 3), (None, 2)])
def test_held_out_problems_are_at_eval_difficulty_else_the_datas(eval_difficulty, expected):
    from r1jax.rl.data import DataConfig
    from r1jax.rl.evaluate import held_out_problems
    from r1jax.rl.tasks import get_task

    data = DataConfig(tasks=("arithmetic",), difficulty=2, num_problems=8)
    cfg = EvalConfig(num_problems=4, seed=1, difficulty=eval_difficulty)
    problems = held_out_problems(data, cfg, read_data_file=False)
    assert [p["difficulty"] for p in problems] == [expected] * 4
    # the held-out seed's first problems at that level, in order (read_data_file=False: none skipped)
    task = get_task("arithmetic", expected)
    assert [p["prompt"] for p in problems] == [task.generate(1, i).prompt for i in range(4)]
