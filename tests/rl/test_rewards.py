"""Reward functions in-process: extraction, format, overlong, combination, and no eval of text (the language
reward: test_rewards_language.py)."""

import builtins
import pickle

import pytest

from r1jax.errors import UserError
from r1jax.rl.rewards import (REWARDS, CodeConfig, PoolConfig, RewardsConfig, ScoreItem, combine, extract_answer,
                              register_reward, score_item)
from r1jax.rl.rewards.config import FieldError
from r1jax.rl.rewards.extract import split_completion
from tests.rl.test_reward_pool import hostile_completions


def score(name, completion, reference="7", task="math", length=None, **config):
    cfg = RewardsConfig(names=(name,), weights=(1.0,), **config)
    return score_item(ScoreItem("q", completion, reference, task, length), cfg)[name]


@pytest.mark.parametrize("completion,answer", [
    ("<think> a </think> <answer> 42 </answer>", "42"),
    ("<answer>1</answer> <answer> 2 </answer>", "2"),
    (r"<think> \boxed{1} </think> \boxed{\frac{1}{2}}", r"\frac{1}{2}"),
    (r"\boxed{a{b}c} and \boxed{d", "a{b}c"),  # the last *balanced* box
    ("</think> <answer> 3 </answer>", "3"),  # a template that opens <think> in the prompt
    ("<think> <answer> 3 </answer>", None),  # unclosed thought: no final answer
    ("<answer> 3", None), ("<answer>   </answer>", None), ("plain text", None),
    ("<think> a </think> <answer> 2 </answer> wait </think>", None),  # before the last </think>: still thought
    (r"\boxed {5}", "5"),  # spaces between \boxed and its brace
    (r"\boxed{3} <answer> 4", None),  # an unclosed <answer> does not fall back to a box
    # MAX_BOXED_TRIES = 4: a balanced box behind 3 unbalanced ones is found; behind 4 the search gives up
    (r"\boxed{7} then \boxed{ a \boxed{ b \boxed{ c", "7"), (r"\boxed{7} \boxed{ \boxed{ \boxed{ \boxed{", None),
])
def test_extract_answer(completion, answer):
    assert extract_answer(completion) == answer


def test_answers_over_k_characters_are_no_answer_never_shortened():
    assert extract_answer("<answer>" + "9" * 1000 + "12</answer>", max_chars=5) is None
    assert extract_answer("<answer> 99912 </answer>", max_chars=5) == "99912"  # exactly K after stripping
    assert score("accuracy", "<answer>" + "x" * 5000 + " 7</answer>", answer_max_chars=2) == 0.0
    assert score("accuracy", "<answer>7" + " " * 300 + "</answer>") == 1.0  # stripped before the limit
    flipped = "<answer>-" + " " * 300 + "7</answer>"  # the model wrote -7; its last 256 characters read 7
    assert extract_answer(flipped) is None
    assert score("accuracy", flipped, reference="7", task="arithmetic") == 0.0
    assert score("accuracy", flipped, reference="-7", task="arithmetic") == 0.0
    thought = "<think> t </think> "
    assert score("format", thought + "<answer> 12345 </answer>", answer_max_chars=5) == 1.0
    assert score("format", thought + "<answer> 123456 </answer>", answer_max_chars=5) == 0.0  # as extraction


def test_split_completion():
    assert split_completion("<think> t </think> rest") == (" t ", " rest")
    assert split_completion("no tags") == (None, "no tags")
    assert split_completion("<think> open") == (" open", "")
    assert split_completion("<think> a <think> b </think> r") == (" b ", " r")  # after the last <think> before it
    assert split_completion("<think> a </think> b </think> c") == (" a </think> b ", " c")  # to the last </think>
    assert split_completion("reasoning </think> r") == ("reasoning ", " r")  # <think> was in the prompt


@pytest.mark.parametrize("completion,expected", [
    ("<think> 3+4=7 </think> <answer> 7 </answer>", 1.0),
    ("  <think>\nstep\n</think>\n<answer>7</answer>\n", 1.0),
    ("<think> step </think><answer>7</answer>", 1.0),
    ("<think>  </think> <answer> 7 </answer>", 0.0),  # an empty thought does not count
    ("<think> step </think> <answer>  </answer>", 0.0),
    ("<think> step </think> <answer> 7 </answer> trailing", 0.0),
    ("preamble <think> step </think> <answer> 7 </answer>", 0.0),
    ("<think> step </think> between <answer> 7 </answer>", 0.0),
    ("<answer> 7 </answer> <think> step </think>", 0.0),
    ("<think> a <think> b </think> <answer> 7 </answer>", 0.0),
    ("<think> a </think> <answer> 7 </answer> <answer> 8 </answer>", 0.0),
    ("<think> step </think> <answer> 7 </think> </answer>", 0.0),
    ("<think> step <answer> 7 </answer>", 0.0), (r"<think> step </think> \boxed{7}", 0.0), ("", 0.0),
    ("<think> step <answer> 7 </think> </answer>", 0.0),  # each tag once, interleaved: the order counts
    # a thought or an answer that shows nothing (zero-width, format or filler characters) is empty: 1.0 before
    ("<think>\u200b</think><answer>7</answer>", 0.0), ("<think> step </think><answer>\u200b</answer>", 0.0),
    ("<think>\u2060\ufeff \u200d</think><answer>7</answer>", 0.0), ("<think>\u3164</think><answer>7</answer>", 0.0),
    ("<think> step </think><answer>\u0301</answer>", 0.0), ("<think> 步骤 </think><answer>七</answer>", 1.0),
    ("<think>x</think><answer>7</answer>", 1.0),  # a thought of one character is a thought
    ("<think>\x00\x07</think><answer>7</answer>", 0.0), ("<think> t </think><answer>\x1b</answer>", 0.0),  # controls
])
def test_format_is_strict(completion, expected):
    assert score("format", completion) == expected


def test_a_code_answer_is_not_held_to_answer_max_chars():
    """A program in <answer> is as long as it needs (the code reward has its own limit, max_program_chars);
    any other task's answer longer than answer_max_chars is still no answer, for format as for accuracy."""
    steps = "".join(f"    # step {i}: double x, as the question asks for it\n" for i in range(5))
    program = "def f(x):\n" + steps + "    return 2 * x\n"
    program += "#" * (301 - len(program))
    assert len(program) == 301
    completion = f"<think> double x </think> <answer>\n{program}</answer>"
    config = RewardsConfig(names=("code", "format", "accuracy"), weights=(1.0, 1.0, 1.0),
                           code=CodeConfig(sandbox="rlimits_only", wall_s=2.0, cpu_s=1, memory_mb=256))
    item = ScoreItem("Write f(x) that doubles x.", completion, "", "code", tests='["assert f(2) == 4"]',
                     entry_point="f")
    assert score_item(item, config) == {"code": 1.0, "format": 1.0, "accuracy": 0.0}
    fenced = f"<think> t </think> <answer>\n```python\n{program}```\n</answer>"
    assert score("format", fenced, task="code") == 1.0
    assert score("format", "<think> t </think> <answer> 123456 </answer>", task="code", answer_max_chars=5) == 1.0
    math_answer = "1" + " + 1" * 75  # 301 characters
    assert len(math_answer) == 301
    for task in ("math", "arithmetic"):
        assert score("format", f"<think> t </think> <answer> {math_answer} </answer>", task=task) == 0.0
        assert score("format", f"<think> t </think> <answer> {math_answer[:256]} </answer>", task=task) == 1.0
    assert score("format", "<think> t </think> <answer>  </answer>", task="code") == 0.0  # still non-empty
    assert score("format", f"<think>  </think> <answer>\n{program}</answer>", task="code") == 0.0


@pytest.mark.parametrize("length,expected", [(0, 0.0), (768, 0.0), (769, -1 / 256), (896, -0.5),
                                             (1024, -1.0), (1025, -1.0), (5000, -1.0)])
def test_overlong_penalty_ramps_over_the_buffer(length, expected):
    assert score("overlong", "x", length=length, max_length=1024, overlong_buffer=256) == pytest.approx(expected)


def test_overlong_counts_characters_without_a_token_length():
    assert score("overlong", "x" * 6, max_length=10, overlong_buffer=4) == 0.0
    assert score("overlong", "x" * 8, max_length=10, overlong_buffer=4) == -0.5
    assert score("overlong", "x" * 11, max_length=10, overlong_buffer=4) == -1.0


def test_rewards_combine_with_config_weights_and_custom_rewards_register_by_name():
    @register_reward("test_constant_half")
    def half(item, config):
        return 0.5

    try:
        config = RewardsConfig(names=("accuracy", "format", "test_constant_half"), weights=(1.0, 0.25, 2.0))
        item = ScoreItem("q", "<think> 3+4 </think> <answer> 7 </answer>", "7", "arithmetic")
        rewards = score_item(item, config)
        assert rewards == {"accuracy": 1.0, "format": 1.0, "test_constant_half": 0.5}
        assert combine(rewards, config) == pytest.approx(1.0 + 0.25 + 1.0)
    finally:
        del REWARDS["test_constant_half"]


@pytest.mark.parametrize("kwargs,field", [
    ({"names": ()}, "rewards.names"), ({"names": ("accuracy", "accuracy"), "weights": (1, 1)}, "rewards.names"),
    ({"weights": (1.0,)}, "rewards.weights"), ({"language": "xx"}, "rewards.language"),
    ({"overlong_buffer": 2000}, "rewards.overlong_buffer"), ({"answer_max_chars": 0}, "rewards.answer_max_chars"),
    # past the math verifier's cap a longer answer scored 0 whatever the config said (it was taken silently)
    ({"answer_max_chars": 1001}, "rewards.answer_max_chars"),
])
def test_rewards_config_errors_name_the_field(kwargs, field):
    with pytest.raises(UserError, match=field.replace(".", r"\.")):
        RewardsConfig(**kwargs)


@pytest.mark.parametrize("make,named", [
    (lambda: RewardsConfig(names=("accuracy",), weights=(1.0, 2.0)), "rewards.weights"),  # a weight too many
    (lambda: RewardsConfig(max_length=0, overlong_buffer=0), "rewards.max_length"),
    (lambda: RewardsConfig(names=("accuracy", ""), weights=(1.0, 1.0)), "rewards.names"),
    (lambda: PoolConfig(workers=0), "reward_pool.workers"), (lambda: PoolConfig(workers=1025), "reward_pool.workers"),
    (lambda: PoolConfig(timeout_s=0.0), "reward_pool.timeout_s"),
    (lambda: PoolConfig(max_tasks_per_worker=-1), "reward_pool.max_tasks_per_worker"),
    (lambda: PoolConfig(memory_mb=255), "reward_pool.memory_mb"),
    (lambda: PoolConfig(max_failed_steps=1.5), "reward_pool.max_failed_steps"),
    (lambda: CodeConfig(wall_s=0.0), "rewards.code.wall_s"),
    (lambda: CodeConfig(memory_mb=63), "rewards.code.memory_mb"),
])
def test_each_bound_refuses_the_value_just_past_it(make, named):
    with pytest.raises(FieldError, match=named.replace(".", r"\.") + " = "):
        make()


def test_the_values_at_the_bounds_are_accepted():
    assert RewardsConfig(max_length=1, overlong_buffer=1).max_length == 1
    assert PoolConfig(workers=1024, timeout_s=0.01, max_tasks_per_worker=0, memory_mb=256).workers == 1024
    assert PoolConfig(workers=1, memory_mb=0, max_failed_steps=0).workers == 1
    assert CodeConfig(wall_s=0.01, memory_mb=64).memory_mb == 64


def test_config_errors_can_name_a_commands_flags():
    with pytest.raises(FieldError) as refused:
        RewardsConfig(max_length=8, overlong_buffer=9)
    assert str(refused.value) == "rewards.overlong_buffer = 9: expected in [0, max_length=8]"
    flags = {"rewards.overlong_buffer": "--overlong-buffer", "rewards.max_length": "--max-length"}
    assert str(refused.value.for_flags(flags)) == "--overlong-buffer 9: expected in [0, --max-length 8]"
    # a field without a flag: the config's own words
    assert refused.value.for_flags({"rewards.overlong_buffer": "--overlong-buffer"}) is refused.value


def test_a_config_error_crosses_a_process_boundary_whole():
    """Raised in a worker (reward pool, data loader), it is pickled back to the trainer: the same error there."""
    with pytest.raises(FieldError) as refused:
        RewardsConfig(max_length=8, overlong_buffer=9)
    back = pickle.loads(pickle.dumps(refused.value))
    assert type(back) is FieldError and str(back) == str(refused.value) and back.refs == {"max_length": 8}
    assert str(back.for_flags({"rewards.overlong_buffer": "-o", "rewards.max_length": "-m"})) == \
        "-o 9: expected in [0, -m 8]"


def test_unknown_reward_name_is_a_user_error():
    with pytest.raises(UserError, match="unknown reward"):
        score_item(ScoreItem("q", "c", "r"), RewardsConfig(names=("nope",), weights=(1.0,)))


def test_model_text_never_reaches_eval_sympify_or_parse_expr(monkeypatch, tmp_path):
    """Every string-evaluating entry point of sympy goes through parse_expr (sympify(str) too), which calls
    eval; spy on all three while scoring valid, wrong and hostile answers with every verifier."""
    import math_verify.parser
    import sympy.parsing.sympy_parser as sympy_parser

    import sympy.physics.units  # noqa: F401  (simplify imports it lazily; it sympifies its own constants)

    calls = []
    real_eval = builtins.eval

    def spy(name, real):
        def wrapped(*args, **kwargs):
            calls.append((name, str(args[0])[:80]))
            return real(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(sympy_parser, "parse_expr", spy("parse_expr", sympy_parser.parse_expr))
    monkeypatch.setattr(math_verify.parser, "parse_expr", spy("math_verify.parse_expr", sympy_parser.parse_expr))
    monkeypatch.setattr(builtins, "eval", spy("eval", real_eval))
    completions = hostile_completions(tmp_path / "pwned")[:20] + [
        "<think> a </think> <answer> x^2-x-6 </answer>", r"\boxed{\frac{1}{2}}", "<answer>(3+5)*2</answer>",
        "<answer>1+1</answer>", "<answer>2*x + sin(x)</answer>", "<answer>x = 5</answer>"]
    config = RewardsConfig(names=("accuracy", "format", "language"), weights=(1.0, 1.0, 1.0))
    for task, reference in [("math", "x^2-x-6"), ("arithmetic", "2"), ("countdown", "(3+5)*2"),
                            ("algebra", "x^2-x-6")]:
        for completion in completions:
            score_item(ScoreItem("Make 16 from 2, 3, 5 (+-*/, each at most once)", completion, reference, task),
                       config)
    assert calls == []
    assert list(tmp_path.iterdir()) == []


def test_accuracy_checks_a_countdown_answer_against_the_numbers_and_operators_its_prompt_lists():
    """The prompt reaches the verifier: 8*2 uses a listed 8 (not in the reference (3+5)*2), and a prompt listing
    only + and - refuses the product; without a prompt the reference's numbers are the allowed ones."""
    def countdown(prompt, answer):
        item = ScoreItem(prompt, f"<think> t </think> <answer> {answer} </answer>", "(3+5)*2", "countdown")
        return score_item(item, RewardsConfig(names=("accuracy",), weights=(1.0,)))["accuracy"]

    assert countdown("Make 16 from 2, 3, 5, 8 (+-*/, each at most once)", "8*2") == 1.0
    assert countdown("Make 16 from 2, 3, 5 (+-*/, each at most once)", "8*2") == 0.0
    assert countdown("q", "8*2") == 0.0 and countdown("q", "(3+5)*2") == 1.0
    assert countdown("Make 16 from 2, 3, 5 (+-, each at most once)", "(3+5)*2") == 0.0


def test_the_overlong_buffer_may_be_0_or_the_whole_length():
    """DAPO's soft overlong punishment (eq. 13): 0 up to L_max - L_cache, ((L_max - L_cache) - |y|) / L_cache up
    to L_max, -1 past it; L_cache 0 is the hard cut-off, L_cache = L_max a ramp from the first token."""
    from r1jax.rl.rewards.functions import overlong_penalty

    def overlong(length, max_length, buffer):
        return overlong_penalty(ScoreItem("p", "x", "r", length=length),
                                RewardsConfig(max_length=max_length, overlong_buffer=buffer))

    assert [overlong(n, 8, 0) for n in (7, 8, 9)] == [0.0, 0.0, -1.0]
    assert [overlong(n, 8, 8) for n in (0, 2, 4, 8, 9)] == [0.0, -0.25, -0.5, -1.0, -1.0]
