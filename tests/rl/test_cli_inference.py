"""`r1jax generate` and `r1jax eval` on a trained checkpoint (the session's tiny run)."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from r1jax.errors import UserError
from r1jax.model.factory import init_policy
from r1jax.rl import evaluate as evaluate_module
from r1jax.rl import rewards as rewards_module
from r1jax.rl.checkpoint import save_policy
from r1jax.rl.cli.main import main
from r1jax.rl.config import load_config
from r1jax.rl.sampler import Sampler
from r1jax.sharding.context import use_mesh
from r1jax.sharding.mesh import build_mesh
from tests.rl.conftest import TRAIN_CONFIG


def run_main(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_json_gives_ids_logprobs_and_text(capsys, finished_run):
    code, out, _ = run_main(capsys, "generate", str(finished_run), "--prompt", "Compute 12+34", "--samples", "3",
                            "--max-new-tokens", "5", "--temperature", "1.0", "--json", "--seed", "4")
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["sample"] for r in records] == [0, 1, 2]
    for r in records:
        assert 1 <= len(r["ids"]) <= 5 and len(r["logprobs"]) == len(r["ids"])
        assert all(lp <= 0 for lp in r["logprobs"]) and isinstance(r["text"], str)
    code, again, _ = run_main(capsys, "generate", str(finished_run), "--prompt", "Compute 12+34", "--samples",
                              "3", "--max-new-tokens", "5", "--temperature", "1.0", "--json", "--seed", "4")
    assert again == out  # same seed, same samples


def test_generate_greedy_from_ids_is_deterministic_and_bad_ids_are_named(capsys, finished_run):
    # 3 new tokens, one sample, ignoring eos: test_generate_and_eval_take_a_prompt_format's compiled program
    args = ("generate", str(finished_run), "--ids", "1,40,41,42", "--temperature", "0", "--max-new-tokens", "3",
            "--ignore-eos", "--json")
    _, first, _ = run_main(capsys, *args)
    _, second, _ = run_main(capsys, *args)
    record = json.loads(first)
    assert first == second and len(record["ids"]) == 3
    code, _, err = run_main(capsys, "generate", str(finished_run), "--ids", "1,99999")
    assert code == 2 and "99999" in err
    code, _, err = run_main(capsys, "generate", str(finished_run), "--ids", "1,x")
    assert code == 2 and "--ids" in err


def test_eval_json_reports_r1_protocol_figures(capsys, finished_run, tmp_path):
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Compute {a}+{a}", "answer": str(2 * a),
                                        "task": "arithmetic"}) + "\n" for a in range(10, 12)))
    # 2 problems in one sampler call, 3 samples each: the compiled program of the other arithmetic evals
    # (test_eval_task_picks_..., test_eval_top_k_one_...). 6 problems compiled a 4 x 3 call too (eval.batch_size 4)
    # for nothing read here: tests/rl/test_evaluate.py checks the calls of batch_size prompts and their remainder
    code, out, _ = run_main(capsys, "eval", str(finished_run), "--data", str(data), "--samples", "3",
                            "--workers", "1", "--json")
    assert code == 0
    figures = json.loads(out)
    assert figures["n_problems"] == 2 and figures["k"] == 3
    assert {"pass@1", "cons@3", "pass@3", "format_rate", "response_length", "accuracy_by_difficulty"} <= set(figures)
    assert 0 <= figures["pass@1"] <= figures["pass@3"] <= 1
    code, _, err = run_main(capsys, "eval", str(finished_run), "--data", str(tmp_path / "missing.jsonl"))
    assert code == 2


def test_eval_with_a_held_out_set_too_large_for_the_task_space_exits_2(capsys, finished_run):
    # 400 > the 300 held-out problems difficulty 1 has: the search draws 50 x 400 candidates before it gives up
    code, _, err = run_main(capsys, "eval", str(finished_run), "--difficulty", "1", "--num-problems", "400")
    assert code == 2 and "only 300 held-out problems" in err and len(err.strip().splitlines()) == 1


def test_generate_and_eval_take_a_prompt_format(capsys, finished_run):
    """--template formats --prompt (default: the run's, chat): greedy generation equals that of the formatted
    prompt's ids; --raw is --template none."""
    from r1jax.rl.checkpoint import find_tokenizer

    tok = find_tokenizer(finished_run)
    greedy = ("--temperature", "0", "--max-new-tokens", "3", "--ignore-eos", "--json")

    def generated(*source):
        code, out, _ = run_main(capsys, "generate", str(finished_run), *source, *greedy)
        assert code == 0
        return json.loads(out)["ids"]

    texts = {"none": "Compute 12+34", "chat": "User: Compute 12+34\nAssistant:"}
    for template, text in texts.items():
        expected = generated("--ids", ",".join(map(str, tok.encode(text, add_bos=True))))
        assert generated("--prompt", "Compute 12+34", "--template", template) == expected, template
    assert generated("--prompt", "Compute 12+34") == generated("--prompt", "Compute 12+34", "--template", "chat")
    assert generated("--prompt", "Compute 12+34", "--raw") == generated("--prompt", "Compute 12+34", "--template",
                                                                          "none")
    with pytest.raises(SystemExit):  # argparse: not a prompt format
        main(["eval", str(finished_run), "--template", "alpaca"])
    assert "invalid choice: 'alpaca'" in capsys.readouterr().err


def test_generate_top_k_one_is_greedy_at_any_temperature(capsys, finished_run):
    # 3 samples of at most 5 new tokens; top-k 1 compiles the sampler's filters, a program of its own (eos stops
    # a row alike in the greedy and the top-k 1 samples: the same tokens up to it)
    def ids(*options):
        code, out, _ = run_main(capsys, "generate", str(finished_run), "--prompt", "Compute 12+34", "--samples",
                                "3", "--max-new-tokens", "5", "--json", "--seed", "2", *options)
        assert code == 0
        return [json.loads(line)["ids"] for line in out.splitlines()]

    greedy = ids("--temperature", "0")
    assert ids("--temperature", "1.0", "--top-k", "1") == greedy  # one candidate left: the argmax, 3 times
    assert len({tuple(r) for r in ids("--temperature", "1.0", "--top-k", "0")}) > 1  # unfiltered: they differ


def spy_on_evaluation(monkeypatch):
    """Records the problems `eval` evaluates, the rows the sampler returns (prompt-major, k per prompt) and the
    tasks whose verifiers the reward pool's workers load."""
    seen = {"problems": [], "completions": [], "pool_tasks": []}
    real_evaluate, real_generate, real_pool = evaluate_module.evaluate, Sampler.generate, rewards_module.RewardPool

    def pool(*args, tasks=None, **kwargs):
        seen["pool_tasks"].append(tasks)
        return real_pool(*args, tasks=tasks, **kwargs)

    def evaluate(sampler, states, tokenizer, template, problems, *args, **kwargs):
        seen["problems"] += problems
        return real_evaluate(sampler, states, tokenizer, template, problems, *args, **kwargs)

    def generate(self, *args, **kwargs):
        rollout = real_generate(self, *args, **kwargs)
        lengths = np.asarray(rollout.lengths_B)
        seen["completions"] += [tuple(row[:n]) for row, n in zip(np.asarray(rollout.completion_BN).tolist(), lengths)]
        return rollout

    monkeypatch.setattr(evaluate_module, "evaluate", evaluate)  # the CLI imports it when it runs
    monkeypatch.setattr(Sampler, "generate", generate)
    monkeypatch.setattr(rewards_module, "RewardPool", pool)
    return seen


def test_eval_task_picks_its_problems_and_tiny_top_p_makes_the_k_samples_one(capsys, finished_run, monkeypatch):
    # the run trained on arithmetic only; --task countdown must evaluate countdown problems. 2 problems x 3
    # samples a call, as the other evals (countdown's prompts take the 64-token bucket: a program of its own)
    seen = spy_on_evaluation(monkeypatch)
    k = 3
    code, out, _ = run_main(capsys, "eval", str(finished_run), "--task", "countdown", "--num-problems", "2",
                            "--samples", str(k), "--temperature", "1.0", "--top-p", "1e-6", "--workers", "1",
                            "--json")
    assert code == 0
    figures = json.loads(out)
    assert len(seen["problems"]) == 2 == figures["n_problems"]
    assert all(p["task"] == "countdown" and p["prompt"].startswith("Make ") for p in seen["problems"])
    assert seen["pool_tasks"] == [["countdown"]]  # its workers load no other task's verifier
    groups = [seen["completions"][i:i + k] for i in range(0, len(seen["completions"]), k)]
    assert len(groups) == 2 and all(len(set(g)) == 1 for g in groups)  # top-p 1e-6 keeps only the argmax
    # k identical samples: each problem is all right or all wrong, so the three figures coincide
    assert figures["pass@1"] == figures[f"cons@{k}"] == figures[f"pass@{k}"]

    seen["problems"].clear()
    seen["completions"].clear()
    # top-k 512 (the whole vocabulary) with top-p 1 removes no token, as no filter does; the sampler compiles its
    # filters all the same (rl.sampler: SamplingConfig.filters), so this call reuses the arithmetic evals' 2 x 3
    # program (test_eval_json_reports_r1_protocol_figures)
    code, out, _ = run_main(capsys, "eval", str(finished_run), "--task", "arithmetic", "--num-problems", "2",
                            "--samples", str(k), "--temperature", "1.0", "--top-p", "1.0", "--top-k", "512",
                            "--workers", "1", "--json")
    assert code == 0
    assert all(p["task"] == "arithmetic" and p["prompt"].startswith("Compute ") for p in seen["problems"])
    groups = [seen["completions"][i:i + k] for i in range(0, len(seen["completions"]), k)]
    assert any(len(set(g)) > 1 for g in groups)  # without the filter the samples of a prompt differ


def test_eval_top_k_one_makes_the_k_samples_one_and_a_negative_top_k_is_refused(capsys, finished_run, monkeypatch):
    seen = spy_on_evaluation(monkeypatch)
    k = 3
    code, out, _ = run_main(capsys, "eval", str(finished_run), "--task", "arithmetic", "--num-problems", "2",
                            "--samples", str(k), "--temperature", "1.0", "--top-p", "1.0", "--top-k", "1",
                            "--workers", "1", "--json")
    assert code == 0
    figures = json.loads(out)
    groups = [seen["completions"][i:i + k] for i in range(0, len(seen["completions"]), k)]
    assert len(groups) == 2 and all(len(set(g)) == 1 for g in groups)  # one candidate left: the argmax
    assert figures["pass@1"] == figures[f"cons@{k}"] == figures[f"pass@{k}"]
    with pytest.raises(SystemExit) as exit_info:  # a usage error naming the flag
        main(["eval", str(finished_run), "--top-k", "-1"])
    assert exit_info.value.code == 2 and "--top-k: expected an integer >= 0, got -1" in capsys.readouterr().err


@pytest.mark.parametrize("command, flags, section", [("generate", ["--ids", "1,2"], "sampling"), ("eval", [], "eval")])
def test_a_top_k_past_the_vocabulary_is_refused_naming_the_flag(capsys, finished_run, command, flags, section):
    """The config refuses sampling.top_k / eval.top_k past model.vocab_size (512 here); the flags that replace
    them took any count and sampled unfiltered."""
    code, out, err = run_main(capsys, command, str(finished_run), *flags, "--top-k", "513")
    assert code == 2 and out == ""
    assert f"--top-k 513: {section}.top_k=513: must be at most model.vocab_size=512" in err


def test_eval_table_names_each_figure_once_with_one_sample(capsys):
    from r1jax.rl.cli.eval import _print_table
    figures = {"k": 1, "n_problems": 3, "pass@1": 0.5, "cons@1": 0.5, "format_rate": 1.0, "response_length": 9.0,
               "reflection_rate": 0.0, "accuracy_by_difficulty": {"1": 0.5}}
    _print_table(figures)
    rows = [line.split("│")[1].strip() for line in capsys.readouterr().out.splitlines() if line.count("│") == 3]
    assert rows == ["pass@1", "cons@1", "format_rate", "response_length", "reflection_rate",
                    "pass@1 difficulty 1"]


def test_eval_table_of_a_files_rows_has_no_difficulty_row(capsys):
    # a file's rows carry no difficulty (read as 0): the table said "pass@1 difficulty 0"
    from r1jax.rl.cli.eval import _print_table
    figures = {"k": 1, "n_problems": 3, "pass@1": 0.5, "cons@1": 0.5, "format_rate": 1.0, "response_length": 9.0,
               "reflection_rate": 0.0, "accuracy_by_difficulty": {"0": 0.5}}
    _print_table(figures)
    rows = [line.split("│")[1].strip() for line in capsys.readouterr().out.splitlines() if line.count("│") == 3]
    assert rows == ["pass@1", "cons@1", "format_rate", "response_length", "reflection_rate"]


def test_a_completion_past_the_models_context_and_samples_past_the_bound_are_refused(capsys, finished_run, tmp_path):
    """2^30 new tokens passed the flag's bound and went to the device as one cache (an XLA out-of-memory
    traceback); 10^8 samples per problem ran for minutes before any progress line."""
    context = load_config(str(finished_run / "config.yaml")).model.max_position_embeddings
    code, _, err = run_main(capsys, "generate", str(finished_run), "--ids", "1,40,41", "--max-new-tokens",
                            str(context - 2), "--ignore-eos")
    assert code == 2 and f"a prompt of 3 tokens and {context - 2} new tokens pass the model's context of " \
                          f"{context} tokens (model.max_position_embeddings)" in err and "Traceback" not in err
    code, _, err = run_main(capsys, "eval", str(finished_run), "--max-new-tokens", str(context + 1))
    assert code == 2 and f"--max-new-tokens {context + 1}: {context + 1} new tokens pass" in err
    # a data file's prompt too long for any budget is named by its row, as the data loaders name one ("FILE: row N":
    # the blank line counts), not as --max-new-tokens
    rows = tmp_path / "long.jsonl"
    rows.write_text(json.dumps({"prompt": "1+1", "answer": "2"}) + "\n\n"
                    + json.dumps({"prompt": "7 " * context, "answer": "7"}) + "\n")
    code, _, err = run_main(capsys, "eval", str(finished_run), "--data", str(rows), "--max-new-tokens", "1")
    assert code == 2 and f"{rows}: row 3: the prompt in the " in err and "--max-new-tokens" not in \
        err.splitlines()[-1] and f"fills the model's context of {context} tokens" in err
    code, _, err = run_main(capsys, "eval", str(finished_run), "--samples", "1025")
    assert code == 2 and "--samples 1025: eval.samples=1025: must be at most 1,024" in err


def test_generate_samples_past_the_moe_dispatchs_int32_index_are_refused_naming_the_flag(capsys, finished_run):
    """--samples 2^31-1 passed the flag's bound and overflowed the MoE dispatch's int32 index (an OverflowError
    traceback), as rows x tokens x experts per token past 2^31-1 do: the config bounds a run's sampler calls so."""
    code, _, err = run_main(capsys, "generate", str(finished_run), "--ids", "1,40,41", "--max-new-tokens", "4",
                            "--samples", "2147483647")
    assert code == 2 and "Traceback" not in err, err
    assert ("r1jax generate: error: --samples 2147483647: 2,147,483,647 rows x " in err
            and "is over 2^31-1 token copies (the MoE dispatch indexes them in int32)" in err), err


def test_generate_takes_a_prompt_longer_than_the_largest_bucket(capsys, finished_run):
    """The advice was "raise sampling.prompt_buckets", a setting generate does not take: one prompt gets a
    bucket of its own (a multiple of 64 tokens)."""
    largest = load_config(str(finished_run / "config.yaml")).sampling.prompt_buckets[-1]
    ids = ",".join(str(40 + i % 20) for i in range(largest + 5))
    code, out, err = run_main(capsys, "generate", str(finished_run), "--ids", ids, "--max-new-tokens", "3",
                              "--temperature", "0", "--ignore-eos", "--json")
    assert code == 0, err
    assert len(json.loads(out.splitlines()[-1])["ids"]) == 3


def test_eval_of_a_task_that_generates_no_problems_asks_for_its_rows(capsys, tmp_path):
    # "task 'math': difficulty 2 is not one of [1]" before: the checkpoint's difficulty, for a task with none
    code, _, err = run_main(capsys, "eval", str(tmp_path / "CK"), "--task", "math")
    assert code == 2 and "--task math: task 'math' has no generator" in err and "--data FILE" in err, err


def test_eval_takes_rows_whose_prompts_pass_the_largest_bucket(capsys, finished_run, tmp_path):
    """The advice was "raise sampling.prompt_buckets", a setting eval does not take."""
    largest = load_config(str(finished_run / "config.yaml")).sampling.prompt_buckets[-1]
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"prompt": "Compute " + " + ".join(["1"] * largest), "answer": str(largest)}) + "\n")
    code, out, err = run_main(capsys, "eval", str(finished_run), "--data", str(data), "--samples", "1",
                              "--max-new-tokens", "4", "--json")
    assert code == 0, err
    assert json.loads(out)["n_problems"] == 1


def test_a_checkpoint_whose_mesh_the_devices_cannot_make_loads_on_an_fsdp_mesh(capsys, tmp_path):
    """A run trained with fixed axes (a slice's expert: 16, data: 2) could not be sampled, evaluated or exported
    on another device count: its mesh "needs 2 devices but 8 are present". The checkpoint is what `r1jax
    --cpu-devices 2 init` writes (rl/cli/init.py, tests/rl/test_cli.py), made here on 2 of the 8 test devices
    (no second JAX process to start)."""
    ck = tmp_path / "ck"
    config = load_config(TRAIN_CONFIG, ["sharding.data=2", "sharding.fsdp=1"])
    mesh, rules = build_mesh(config.sharding, jax.devices()[:2]), config.sharding.logical_rules()
    with use_mesh(mesh, rules):
        save_policy(ck, config, init_policy(config.model, config.seed, mesh, rules))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 1, "expert": 1, "tensor": 1}
    code, out, err = run_main(capsys, "generate", str(ck), "--ids", "5,6,7", "--max-new-tokens", "3",
                              "--temperature", "0", "--json")
    assert code == 0, err
    assert len(json.loads(out.splitlines()[0])["ids"]) == 3
    assert "needs 2 devices but 8 are present: loading on every device's fsdp axis instead" in err
    code, _, err = run_main(capsys, "export-hf", str(ck), str(tmp_path / "hf"))
    assert code == 0, err
    assert (tmp_path / "hf" / "config.json").is_file()


def test_generate_json_log_probs_are_each_samples_own(capsys, finished_run):
    """Each sample's log-probs against a teacher-forced forward of the checkpoint over its own ids (T 1, no top-p
    or top-k): a record showing another sample's log-probs differs by far more than float rounding."""
    from r1jax.rl.checkpoint import load_policy

    code, out, _ = run_main(capsys, "generate", str(finished_run), "--ids", "1,40,41,42", "--samples", "3",
                            "--max-new-tokens", "5", "--temperature", "1.0", "--top-p", "1", "--top-k", "0",
                            "--ignore-eos", "--json", "--seed", "4")
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert len({tuple(r["ids"]) for r in records}) == 3
    _, policy = load_policy(finished_run)
    for r in records:
        logits = np.asarray(policy(np.asarray([[1, 40, 41, 42, *r["ids"]]])).logits_BTV, np.float64)[0]
        log_probs = logits - logits.max(-1, keepdims=True)
        log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
        want = [log_probs[3 + i, token] for i, token in enumerate(r["ids"])]
        np.testing.assert_allclose(r["logprobs"], want, atol=1e-5)


def test_a_checkpoint_whose_weights_do_not_split_over_the_devices_loads_on_fewer(capsys, tmp_path):
    """A run trained on 2 devices (fsdp=-1), opened on 3: fsdp=3 builds but the hidden size 32 does not split over
    it, and generate (which takes no sharding) failed saying "change the mesh or sharding.rules"."""
    from r1jax.rl.checkpoint import inference_mesh, load_policy

    ck = tmp_path / "ck"
    config = load_config(TRAIN_CONFIG)
    mesh, rules = build_mesh(config.sharding, jax.devices()[:2]), config.sharding.logical_rules()
    with use_mesh(mesh, rules):
        save_policy(ck, config, init_policy(config.model, config.seed, mesh, rules))
    mesh = inference_mesh(config.sharding, config.model, jax.devices()[:3])
    assert dict(mesh.shape) == {"data": 1, "fsdp": 2, "expert": 1, "tensor": 1}
    assert "size 32) does not divide by mesh axes fsdp of size 3: loading on fsdp=2 (2 of the 3 devices" in \
        capsys.readouterr().err
    _, policy = load_policy(ck, mesh, rules)
    assert policy(np.asarray([[5, 6, 7]])).logits_BTV.shape[:2] == (1, 3)


def test_on_several_processes_a_checkpoint_whose_weights_do_not_split_is_refused_not_loaded_on_fewer(
        capsys, monkeypatch):
    """A mesh over several processes must hold every device: the fallback tries fsdp over all of them only (2 of
    3 devices would leave a process's device out), and names what to do when the weights do not split there."""
    from r1jax.rl.checkpoint import inference_mesh

    config = load_config(TRAIN_CONFIG)
    sharding = dataclasses.replace(config.sharding, expert=2)  # not on 3 devices, nor on 4 (hidden 32 splits)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(UserError) as info:
        inference_mesh(sharding, config.model, jax.devices()[:3])
    assert "nor do the weights split over fsdp=3: run on a device count that divides the model's sizes" in \
        str(info.value)
    assert dict(inference_mesh(sharding, config.model, jax.devices()[:4]).shape) == \
        {"data": 1, "fsdp": 2, "expert": 2, "tensor": 1}  # the checkpoint's own mesh where the devices make it
    mesh = inference_mesh(dataclasses.replace(sharding, expert=3), config.model, jax.devices()[:4])
    assert dict(mesh.shape) == {"data": 1, "fsdp": 4, "expert": 1, "tensor": 1}
    assert "loading on every device's fsdp axis instead" in capsys.readouterr().err
