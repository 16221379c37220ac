"""Prompts through training: the ids sampling and SFT condition the policy on (`render_prompt` in the run's
prompt format), the default run's ids unchanged by it, and SFT targets that are the completion's tokens only."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from r1jax.errors import UserError
from r1jax.model.factory import init_policy
from r1jax.model.tokenizer import TEMPLATE_NAMES, apply_template, encode_prompt, load_tokenizer, render_prompt
from r1jax.rl.config import load_config
from r1jax.rl.data import build_source, build_tokenizer
from r1jax.rl.evaluate import held_out_problems
from r1jax.rl.train.preflight import check_prompt_lengths
from r1jax.rl.train.rollouts import prompt_texts
from r1jax.rl.train.sft import sft_batch, sft_micro_loss
from r1jax.rl.update import UpdateConfig, split_policy
from tests.model.hf_tokenizer_files import write_hf_tokenizer
from tests.model.tiny import QWEN

BUCKETS = (64, 128, 256)
TRICKY = ["", "Compute {3} + {x}", "  two  spaces\nnew line \t tab ", "unicode ✓ 日本語 😀 \u2581 meta",
          "<s> </s> <pad> <think> </answer>", "\U000f0000_ private use", "User: 1\nAssistant: 2"]


@pytest.fixture(scope="module")
def default_run():
    """The default run's config (configs/tiny.yaml) and its sentencepiece tokenizer, trained as the run does."""
    config = load_config("tiny")
    return config, build_tokenizer(config.tokenizer, config.data)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return load_tokenizer(write_hf_tokenizer(tmp_path_factory.mktemp("qwen"), "qwen"))


def old_prompt_ids(tokenizer, template, prompt):
    """How prompts were encoded before prompt formats: r1jax's template text, BOS first."""
    return tokenizer.encode(apply_template(template, prompt), add_bos=True)


def encode_prompts(tokenizer, template, problems, template_vars):
    """The prompt ids sampling gives the policy (rl.train.rollouts.sample_and_submit)."""
    return [encode_prompt(tokenizer, template, text) for text in prompt_texts(tokenizer, template, problems,
                                                                              template_vars)]


def test_the_default_run_prompts_the_policy_with_the_same_ids(default_run):
    config, tokenizer = default_run
    assert config.tokenizer.template == "chat" and not config.tokenizer.template_vars
    source = build_source(config.data)
    problems = [source[i] for i in range(300)] + held_out_problems(config.data, config.eval)
    problems += [{"prompt": text} for text in TRICKY]
    for template in TEMPLATE_NAMES:
        expected = [old_prompt_ids(tokenizer, template, p["prompt"]) for p in problems]
        assert encode_prompts(tokenizer, template, problems, config.tokenizer.template_vars) == expected, template
        # variables are for chat templates only: r1jax's own formats ignore them when prompts are rendered (a run
        # refuses them before it starts, below; a checkpoint saved before 2026-12-06 may carry them)
        assert encode_prompts(tokenizer, template, problems[:20], {"enable_thinking": False}) == expected[:20]
    with_vars = dataclasses.replace(config, tokenizer=dataclasses.replace(config.tokenizer,
                                                                          template_vars={"enable_thinking": False}))
    with pytest.raises(UserError, match=r"tokenizer.template='chat' \(held-out\): tokenizer.template_vars"):
        check_prompt_lengths(with_vars, tokenizer, ["q"], "held-out")  # what preflight renders before a run


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_the_default_run_prompt_ids_are_unchanged_on_any_text(default_run, prompt):
    _, tokenizer = default_run
    for template in TEMPLATE_NAMES:
        assert render_prompt(tokenizer, template, prompt) == old_prompt_ids(tokenizer, template, prompt)


def rows(count=4):
    return [{"prompt": f"What is {i} + {2 * i}? {'x' * i}", "solution": f"<think> {i} + {2 * i} </think> "
             f"<answer>{3 * i}</answer>"} for i in range(1, count + 1)]


@pytest.mark.parametrize("which", ["sentencepiece", "qwen"])
def test_sft_targets_are_the_completion_and_its_eos_only(default_run, qwen, which):
    tokenizer = default_run[1] if which == "sentencepiece" else qwen
    variables = {} if which == "sentencepiece" else {"enable_thinking": False}  # (r1jax's chat text reads none)
    batch = sft_batch(tokenizer, "chat", rows(), BUCKETS, variables)
    for i, row in enumerate(rows()):
        prompt = render_prompt(tokenizer, "chat", row["prompt"], variables)
        completion = tokenizer.encode(row["solution"]) + [tokenizer.eos_id]
        assert batch["tokens"][i, :len(prompt) + len(completion)].tolist() == prompt + completion
        targets = batch["tokens"][i, 1:][batch["mask"][i]].tolist()  # mask[t]: the token at t + 1 is a target
        assert targets == completion
        assert np.flatnonzero(batch["mask"][i])[0] == len(prompt) - 1  # the first completion token, no earlier
    assert batch["weight"].sum() == pytest.approx(1.0)
    if which == "qwen":  # the chat template's assistant header is prompt, <|im_end|> closes the completion
        assert qwen.decode(prompt, skip_special_tokens=False).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
        assert completion[-1] == qwen.eos_ids[0]


def test_the_sft_loss_is_the_mean_completion_token_loss(qwen):
    """The loss against an independent reference: minus the mean log-prob of the completion tokens (and eos)
    under a full forward pass; a prompt token entering the loss would change it."""
    model = dataclasses.replace(QWEN, vocab_size=qwen.vocab_size + 3)
    graphdef, params, bias = split_policy(init_policy(model, 0))
    batch = sft_batch(qwen, "chat", rows(), BUCKETS)
    loss, (stats, _) = sft_micro_loss(graphdef, UpdateConfig(aux_loss_coef=0.0))(params, bias, None, batch)
    logits = nnx.merge(graphdef, params, bias)(batch["tokens"], batch["positions"], batch["valid"]).logits_BTV
    logp = np.asarray(jax.nn.log_softmax(logits[:, :-1], axis=-1))
    reference, count = 0.0, 0
    for i, row in enumerate(rows()):
        start = len(render_prompt(qwen, "chat", row["prompt"]))
        completion = qwen.encode(row["solution"]) + [qwen.eos_id]
        for offset, token in enumerate(completion):
            reference -= logp[i, start - 1 + offset, token]
            count += 1
    assert float(stats["token_count"]) == count
    assert float(loss) == pytest.approx(reference / count, rel=1e-5)
    prompt_tokens = int(np.asarray(batch["valid"]).sum()) - count
    assert prompt_tokens > count  # most tokens are prompt: a loss over them too would be another number


def test_two_sft_micro_batches_equal_one(qwen):
    """update.micro_batches splits an SFT batch whose token weights are the whole batch's: the sum over the
    micro-batches is the batch's loss and gradient (a loss divided by M passed every test: only GRPO's was
    checked)."""
    import optax

    from r1jax.rl.grpo.optimizer import skip_nonfinite
    from r1jax.rl.train.sft import make_sft_step
    from r1jax.rl.update import init_train_state

    model = dataclasses.replace(QWEN, vocab_size=qwen.vocab_size + 3)
    batch = sft_batch(qwen, "chat", rows(), BUCKETS)
    optimizer = skip_nonfinite(optax.sgd(1.0))  # parameters move by exactly -grad
    results = []
    for micro_batches in (1, 2):
        graphdef, state = init_train_state(init_policy(model, 0), optimizer, with_ref=False)
        update = UpdateConfig(micro_batches=micro_batches, aux_loss_coef=0.0)
        results.append(jax.jit(make_sft_step(graphdef, optimizer, update, model, None))(state, batch))
    (one, one_metrics), (two, two_metrics) = results
    assert float(one_metrics["loss"]) == pytest.approx(float(two_metrics["loss"]), rel=1e-5)
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0)
