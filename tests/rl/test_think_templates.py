"""Chat templates that open `<think>` themselves (R1 distills, Qwen3's thinking models, QwQ): the model's
completion continues a thought its prompt began, so the rewards read `<think>` + completion, and SFT targets
leave out the `<think>` the prompt already holds. Checked with the R1-distill-style template of the test
tokenizer files (`<｜Assistant｜><think>\\n`) against the Qwen-style one, which does not open a thought."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r1jax.model.tokenizer import (completion_text, load_tokenizer, opens_think, prompt_text, render_prompt,
                                   response_text)
from r1jax.rl.rewards import RewardsConfig, score_item
from r1jax.rl.sampler import Rollout
from r1jax.rl.train.rollouts import sample_and_submit
from r1jax.rl.train.sft import sft_batch
from tests.model.hf_tokenizer_files import write_hf_tokenizer

PROBLEM = {"prompt": "Compute 3+4", "answer": "7", "task": "arithmetic"}
CONTINUED = "3+4=7, so the sum is 7.\n</think>\n<answer> 7 </answer>"  # what a model writes after `<think>\n`
WHOLE = "<think> 3+4=7, so the sum is 7. </think> <answer> 7 </answer>"  # a response that opens its own thought


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    return {style: load_tokenizer(write_hf_tokenizer(tmp_path_factory.mktemp(style), style))
            for style in ("deepseek", "qwen")}


class ScriptedSampler:
    """Returns the same completion (given as ids) for every row, ended by the tokenizer's EOS."""

    def __init__(self, ids, eos_id):
        self.ids, self.eos_id = list(ids), eos_id

    def generate(self, policy, prompts, samples, **overrides):
        row = self.ids + [self.eos_id]
        rows = len(prompts) * samples
        completion = np.tile(np.asarray(row, np.int32), (rows, 1))
        tokens = np.concatenate([np.zeros((rows, 2), np.int32), completion], axis=1)
        return Rollout(tokens, np.ones_like(tokens, bool), np.zeros_like(tokens), np.zeros(completion.shape),
                       np.full(rows, len(row), np.int32), np.zeros((1, rows, tokens.shape[1], 2), np.int32),
                       np.int32(len(row)))


class ListPool:
    def submit(self, items):
        return items


def scored(tokenizer, completion):
    sampler = ScriptedSampler(tokenizer.encode(completion), tokenizer.eos_id)
    sampled = sample_and_submit(sampler, None, tokenizer, "chat", [PROBLEM], ListPool(), 2)
    config = RewardsConfig(names=("accuracy", "format", "language"), weights=(1.0, 1.0, 1.0))
    return sampled, [score_item(item, config) for item in sampled.items]


def test_the_test_templates_are_one_that_opens_a_thought_and_one_that_does_not(tokenizers):
    assert opens_think(prompt_text(tokenizers["deepseek"], "chat", PROBLEM["prompt"]))
    assert not opens_think(prompt_text(tokenizers["qwen"], "chat", PROBLEM["prompt"]))
    assert not opens_think(prompt_text(tokenizers["qwen"], "chat", PROBLEM["prompt"], {"enable_thinking": False}))
    for template in ("r1_zero", "none"):
        assert not opens_think(prompt_text(tokenizers["deepseek"], template, PROBLEM["prompt"]))


def test_a_completion_that_continues_the_prompts_thought_gets_every_reward(tokenizers):
    sampled, rewards = scored(tokenizers["deepseek"], CONTINUED)
    assert [item.completion for item in sampled.items] == ["<think>" + CONTINUED] * 2
    assert sampled.texts == ["<think>" + CONTINUED] * 2
    assert rewards == [{"accuracy": 1.0, "format": 1.0, "language": 1.0}] * 2


def test_without_the_opened_thought_the_same_completion_is_unformatted(tokenizers):
    _, rewards = scored(tokenizers["qwen"], CONTINUED)
    assert rewards[0]["format"] == 0.0 and rewards[0]["accuracy"] == 1.0  # the answer still counts
    _, rewards = scored(tokenizers["qwen"], WHOLE)
    assert rewards[0] == {"accuracy": 1.0, "format": 1.0, "language": 1.0}


def test_a_second_think_after_an_opened_one_is_not_well_formed(tokenizers):
    _, rewards = scored(tokenizers["deepseek"], WHOLE)  # <think><think> ...: two thoughts opened
    assert rewards[0]["format"] == 0.0 and rewards[0]["accuracy"] == 1.0


def test_sft_targets_leave_out_the_think_the_prompt_opened(tokenizers):
    for style, expected in (("deepseek", WHOLE[len("<think>"):].lstrip()), ("qwen", WHOLE)):
        tokenizer = tokenizers[style]
        batch = sft_batch(tokenizer, "chat", [{"prompt": PROBLEM["prompt"], "solution": WHOLE}], (256,))
        prompt = render_prompt(tokenizer, "chat", PROBLEM["prompt"])
        length = int(batch["valid"][0].sum())
        assert batch["tokens"][0, :len(prompt)].tolist() == prompt
        target = batch["tokens"][0, 1:][batch["mask"][0]].tolist()
        assert target == tokenizer.encode(expected) + [tokenizer.eos_id], style
        assert length == len(prompt) + len(target)
        whole = prompt_text(tokenizer, "chat", PROBLEM["prompt"]) + tokenizer.decode(target[:-1])
        assert whole.count("<think>") == 1, style


@settings(max_examples=200, deadline=None)
@given(prompt=st.sampled_from(["User: q\nAssistant:", "<|Assistant|><think>\n", "x <think> ", "<think></think>"]),
       completion=st.text(max_size=40))
def test_completion_text_inverts_response_text(prompt, completion):
    response = response_text(prompt, completion)
    assert response.startswith("<think>") or not opens_think(prompt)
    if opens_think(prompt) and not completion.lstrip().startswith("<think>"):
        assert completion_text(prompt, response) == completion.lstrip()
    elif not opens_think(prompt):
        assert response == completion and completion_text(prompt, response) == completion
