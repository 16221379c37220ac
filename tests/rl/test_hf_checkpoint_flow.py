"""A pretrained Hugging Face checkpoint through r1jax end to end: a random transformers MoE saved with
`save_pretrained` beside real tokenizer files (byte-level BPE, special tokens, a chat template, two eos ids),
vocabulary padded past the tokenizer as Qwen3's is. `r1jax import-hf` then `generate --template chat` equals
transformers' `apply_chat_template` + greedy `generate`; `export-hf` writes the tokenizer files back byte for
byte; a run whose first stage starts from the directory trains (SFT, GRPO) and evaluates with its tokenizer.
Also: export of an r1jax tokenizer writes the chat template of the format the checkpoint was trained with."""

import dataclasses
import json
import pathlib
import shutil

import numpy as np
import pytest
import torch
import transformers
import yaml

from r1jax.errors import UserError
from r1jax.model.hf_io import read_hf_config
from r1jax.model.tokenizer import HFTokenizer, load_tokenizer, render_prompt, train_tokenizer
from r1jax.model.tokenizer_json import FILES
from r1jax.rl.checkpoint import find_tokenizer, load_config as load_checkpoint_config
from r1jax.rl.checkpoint import save_policy
from r1jax.rl.cli.main import main
from r1jax.rl.config import load_config
from r1jax.rl.data import build_tokenizer
from r1jax.rl.train.policy_io import run_tokenizer
from r1jax.rl.train.preflight import preflight
from r1jax.rl.train.trainer import Trainer
from r1jax.model.factory import init_policy
from r1jax.sharding.mesh import build_mesh
from tests.model.hf_models import random_hf_model, read_safetensors
from tests.model.hf_tokenizer_files import write_hf_tokenizer
from tests.model.tiny import DEEPSEEK, QWEN
from tests.rl.conftest import TRAIN_CONFIG

PADDED_VOCAB = 640  # model rows; the tokenizers have about 420 tokens
FAMILIES = {"qwen": QWEN, "deepseek": DEEPSEEK}
PROMPT = "What is 12 + 35? Answer in <answer> tags."


def hf_checkpoint(directory, style: str):
    """A random transformers model of `style`'s family with the style's tokenizer files beside it."""
    model = random_hf_model(dataclasses.replace(FAMILIES[style], vocab_size=PADDED_VOCAB), seed=3)
    model.save_pretrained(directory)
    write_hf_tokenizer(directory, style)  # after save_pretrained: the tokenizer's generation_config.json wins
    return directory


def assert_same_tokenizer_files(copy, source) -> None:
    """Every tokenizer file of `source` is in `copy`, byte for byte."""
    names = [name for name in FILES if (source / name).exists()]
    assert "tokenizer.json" in names and "generation_config.json" in names
    for name in names:
        assert (copy / name).read_bytes() == (source / name).read_bytes(), (copy, name)


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return hf_checkpoint(tmp_path_factory.mktemp("qwen_hf"), "qwen")


def generated_ids(capsys, checkpoint, *extra) -> list[int]:
    capsys.readouterr()
    assert main(["generate", str(checkpoint), "--prompt", PROMPT, "--temperature", "0", "--max-new-tokens", "8",
                 "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out.splitlines()[0])["ids"]


def transformers_greedy(hf_dir, new_tokens: int = 8, suppress: bool = True) -> tuple[list[int], list[int]]:
    """(prompt ids, generated ids) of transformers on the same files: chat template, greedy, padded ids
    suppressed (the tokenizer cannot decode them), stopping at any eos id of generation_config.json."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True)
    prompt = prompt["input_ids"]
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             do_sample=False, max_new_tokens=new_tokens,
                             suppress_tokens=list(range(len(tokenizer), PADDED_VOCAB)) if suppress else None)
    return prompt, out[0, len(prompt):].tolist()


@pytest.mark.parametrize("style", ["qwen", "deepseek"])
def test_generate_from_an_imported_checkpoint_equals_transformers(style, qwen_dir, tmp_path, capsys):
    hf_dir = qwen_dir if style == "qwen" else hf_checkpoint(tmp_path / "hf", style)
    assert main(["import-hf", str(hf_dir), str(tmp_path / "ck")]) == 0
    assert "with its tokenizer" in capsys.readouterr().out
    assert_same_tokenizer_files(tmp_path / "ck" / "tokenizer", hf_dir)
    tokenizer = find_tokenizer(tmp_path / "ck")
    assert isinstance(tokenizer, HFTokenizer) and len(tokenizer.eos_ids) == 2
    assert tokenizer.vocab_size < PADDED_VOCAB
    their_prompt, theirs = transformers_greedy(hf_dir)
    assert render_prompt(tokenizer, "chat", PROMPT) == their_prompt
    ours = generated_ids(capsys, tmp_path / "ck", "--template", "chat")
    assert ours == theirs
    assert max(ours) < tokenizer.vocab_size
    # the random model does reach for padded ids: r1jax's mask is what keeps them out
    assert max(transformers_greedy(hf_dir, suppress=False)[1]) >= tokenizer.vocab_size


def test_export_writes_the_tokenizer_files_back_byte_for_byte(qwen_dir, tmp_path, capsys):
    assert main(["import-hf", str(qwen_dir), str(tmp_path / "ck")]) == 0
    assert main(["export-hf", str(tmp_path / "ck"), str(tmp_path / "out"), "--dtype", "float32"]) == 0
    assert "Hugging Face tokenizer's files as they came" in capsys.readouterr().out
    assert_same_tokenizer_files(tmp_path / "out", qwen_dir)
    source, exported = read_safetensors(qwen_dir), read_safetensors(tmp_path / "out")
    assert source.keys() == exported.keys() and all(np.array_equal(source[k], exported[k]) for k in source)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    original = transformers.AutoTokenizer.from_pretrained(qwen_dir)
    assert theirs(PROMPT)["input_ids"] == original(PROMPT)["input_ids"]
    eos = json.loads((qwen_dir / "generation_config.json").read_text())["eos_token_id"]
    assert transformers.GenerationConfig.from_pretrained(tmp_path / "out").eos_token_id == eos
    assert transformers.AutoConfig.from_pretrained(tmp_path / "out").eos_token_id == eos
    # the configs name the bos its tokenizer lacks (config.json had bos_token_id null)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["bos_token_id"] == json.loads(
        (qwen_dir / "generation_config.json").read_text())["bos_token_id"] is not None
    # an R1-Zero policy (trained on the r1_zero format): --template r1_zero writes a chat template rendering it
    # (README's example; it was refused)
    assert main(["export-hf", str(tmp_path / "ck"), str(tmp_path / "o2"), "--template", "r1_zero"]) == 0
    assert "its chat template replaced by one that renders the r1_zero prompt format" in capsys.readouterr().out
    user = [{"role": "user", "content": PROMPT}]
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "o2").apply_chat_template(
        user, add_generation_prompt=True)["input_ids"] == render_prompt(load_tokenizer(qwen_dir), "r1_zero", PROMPT)


def run_config(hf_dir, *overrides):
    """The trainer tests' run without its model section (the architecture comes from `hf_dir/config.json`),
    its first stage starting from `hf_dir`, prompted with the directory's chat template."""
    run = yaml.safe_load(TRAIN_CONFIG.read_text())
    run["model"] = {"moe_block_size": run["model"]["moe_block_size"]}  # r1jax's own field only
    path = pathlib.Path(hf_dir).parent / f"{pathlib.Path(hf_dir).name}-run.yaml"
    path.write_text(yaml.safe_dump(run))
    stages = (f"stages=[{{name: sft, kind: sft, steps: 2, batch_size: 8, lr: 0.003, init_from: {hf_dir}}}, "
              "{name: grpo, kind: grpo, steps: 2}]")
    config = load_config(path, [stages, "tokenizer.template=chat", "sampling.prompt_buckets=[64,128]", "plots=false",
                                *overrides])
    assert config.model == dataclasses.replace(read_hf_config(hf_dir)[0], moe_block_size=config.model.moe_block_size,
                                               param_dtype=config.model.param_dtype)
    return config


def test_a_run_from_a_hugging_face_directory_trains_and_evaluates_with_its_tokenizer(qwen_dir, tmp_path, capsys):
    # evaluation at GRPO's top-p 1 (R1's 0.95 compiles the sampler's filters): the rollouts' compiled program
    config = run_config(qwen_dir, "eval.top_p=1.0")
    summary = Trainer(config, tmp_path / "run").run()
    assert [e["stage"] for e in summary["evals"]] == ["sft", "grpo"]
    assert summary["final_step"] == 4
    for saved in (tmp_path / "run" / "tokenizer", tmp_path / "run" / "checkpoints" / "tokenizer"):
        assert_same_tokenizer_files(saved, qwen_dir)
    tokenizer = find_tokenizer(tmp_path / "run")
    assert tokenizer == load_tokenizer(qwen_dir)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    grpo = [r for r in rows if r.get("stage") == "grpo" and "response_length/mean" in r]
    assert len(grpo) == 2 and all(0 < r["response_length/mean"] <= 8 for r in grpo)
    assert all(np.isfinite(r["sft/loss"]) for r in rows if "sft/loss" in r)
    # in the run's own evaluation shape (eval.batch_size 4 problems x 2 samples a call: the trainer's compiled
    # program), twice the run's eval.num_problems
    assert main(["eval", str(tmp_path / "run"), "--num-problems", "8", "--samples", "2", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert figures["n_problems"] == 8 and figures["k"] == 2 and 0 < figures["response_length"] <= 8


def test_the_run_tokenizer_comes_from_the_config_the_first_stage_or_the_data(qwen_dir, tmp_path):
    """tokenizer.path, else the tokenizer the first stage's init_from carries, else trained; a later stage whose HF
    directory holds another tokenizer is an error before the first step, unless tokenizer.path chose."""
    assert run_tokenizer(run_config(qwen_dir)) == load_tokenizer(qwen_dir)
    sentencepiece = train_tokenizer(["plain text for a tiny tokenizer"] * 20, 300)
    sentencepiece.save(tmp_path / "sp")
    assert run_tokenizer(run_config(qwen_dir, f"tokenizer.path={tmp_path / 'sp'}")) == sentencepiece
    trained = load_config(TRAIN_CONFIG)
    assert run_tokenizer(trained) == build_tokenizer(trained.tokenizer, trained.data)

    other = hf_checkpoint(tmp_path / "other", "qwen")
    (other / "tokenizer_config.json").write_text((other / "tokenizer_config.json").read_text().replace(
        '"model_max_length": 4096', '"model_max_length": 8192'))  # another tokenizer (its files differ)
    config = run_config(qwen_dir)
    config = dataclasses.replace(config, stages=(config.stages[0], dataclasses.replace(config.stages[1],
                                                                                        init_from=str(other))))
    mesh = build_mesh(config.sharding)
    with pytest.raises(UserError, match=r"stages\[grpo\]\.init_from=.*tokenizer is not the run's"):
        preflight(config, run_tokenizer(config), mesh, config.sharding.logical_rules())
    chosen = dataclasses.replace(config, tokenizer=dataclasses.replace(config.tokenizer, path=str(qwen_dir)))
    preflight(chosen, run_tokenizer(chosen), mesh, chosen.sharding.logical_rules())


def test_a_hugging_face_directory_without_tokenizer_files_is_refused_unless_tokenizer_path_is_set(qwen_dir, tmp_path):
    """Its embeddings are indexed by its own tokenizer's ids: a tokenizer trained on the run's data (what r1jax
    did, silently, `template: chat` falling back to r1jax's own text) would fine-tune them under other ids."""
    weights_only = tmp_path / "weights_only"
    weights_only.mkdir()
    (weights_only / "config.json").write_bytes((qwen_dir / "config.json").read_bytes())
    config = run_config(weights_only)
    with pytest.raises(UserError, match=rf"stages\[sft\]\.init_from='{weights_only}': {weights_only} is a Hugging "
                                        r"Face checkpoint without tokenizer files \(no tokenizer.json or "
                                        r"tokenizer.model\).*set tokenizer.path"):
        run_tokenizer(config)
    chosen = run_config(weights_only, f"tokenizer.path={qwen_dir}")
    assert run_tokenizer(chosen) == load_tokenizer(qwen_dir)
    preflight(chosen, run_tokenizer(chosen), build_mesh(chosen.sharding), chosen.sharding.logical_rules())
    # a later stage from it is refused the same way (its tokenizer cannot be compared with the run's)
    config = run_config(qwen_dir)
    config = dataclasses.replace(config, stages=(config.stages[0], dataclasses.replace(config.stages[1],
                                                                                        init_from=str(weights_only))))
    with pytest.raises(UserError, match=r"stages\[grpo\]\.init_from=.*without tokenizer files"):
        preflight(config, run_tokenizer(config), build_mesh(config.sharding), config.sharding.logical_rules())


def test_a_hugging_face_directory_given_as_a_checkpoint_or_missing_tokenizer_json_is_named(qwen_dir, tmp_path,
                                                                                            capsys):
    """`r1jax generate HF_DIR` said only that the folder held no checkpoint step; import-hf of a folder with
    tokenizer_config.json but no tokenizer.json said "no tokenizer files there"."""
    assert main(["generate", str(qwen_dir), "--ids", "1,2"]) == 2
    assert "it looks like a Hugging Face checkpoint: convert it with `r1jax import-hf`" in capsys.readouterr().err
    assert main(["info", str(qwen_dir)]) == 2
    assert f"is a Hugging Face checkpoint: give a config with stages.0.init_from={qwen_dir}" in " ".join(
        capsys.readouterr().err.split())
    no_json = tmp_path / "no_json"
    shutil.copytree(qwen_dir, no_json, ignore=shutil.ignore_patterns("tokenizer.json"))
    assert main(["import-hf", str(no_json), str(tmp_path / "ck")]) == 0
    assert "no tokenizer.json there (beside its tokenizer_config.json" in capsys.readouterr().out
    # export-hf --tokenizer of another model (one that fits the vocabulary) shipped it silently
    assert main(["import-hf", str(qwen_dir), str(tmp_path / "ck2")]) == 0
    train_tokenizer(["other words for another small tokenizer"] * 20, 280).save(tmp_path / "other")
    capsys.readouterr()
    for tokenizer, noted in ((tmp_path / "other", True), (qwen_dir, False)):
        assert main(["export-hf", str(tmp_path / "ck2"), str(tmp_path / f"out_{noted}"), "--tokenizer",
                     str(tokenizer)]) == 0
        assert ("is not the tokenizer" in capsys.readouterr().err) is noted


def test_a_tokenizer_bigger_than_the_checkpoints_embedding_names_its_config_json(qwen_dir, tmp_path):
    """model.vocab_size comes from HF_DIR/config.json there: 'raise model.vocab_size' was advice the config refuses."""
    small = tmp_path / "small"
    small.mkdir()
    hf_config = json.loads((qwen_dir / "config.json").read_text())
    (small / "config.json").write_text(json.dumps({**hf_config, "vocab_size": 300}))
    config = run_config(small, f"tokenizer.path={qwen_dir}")
    with pytest.raises(UserError) as err:
        preflight(config, run_tokenizer(config), build_mesh(config.sharding), config.sharding.logical_rules())
    message = str(err.value)
    for fragment in (f"{small / 'config.json'}'s vocab_size=300", f"pieces of tokenizer.path='{qwen_dir}'",
                     "not the tokenizer the checkpoint was trained with", "set tokenizer.path"):
        assert fragment in message, message
    assert "raise it" not in message


def test_a_chat_format_without_a_chat_template_fails_before_the_first_step(tmp_path):
    hf_dir = hf_checkpoint(tmp_path / "hf", "qwen")
    config = json.loads((hf_dir / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (hf_dir / "tokenizer_config.json").write_text(json.dumps(config))
    config = run_config(hf_dir)
    with pytest.raises(UserError, match=r"tokenizer.template='chat' .*/hf has no chat template"):
        preflight(config, run_tokenizer(config), build_mesh(config.sharding), config.sharding.logical_rules())


def test_export_of_a_sentencepiece_checkpoint_writes_the_format_it_was_trained_with(tmp_path, capsys):
    """The default run trains with `chat`: the exported chat template renders that format, so transformers'
    apply_chat_template gives the ids r1jax prompted the policy with (BOS included); --template overrides."""
    default = load_config("tiny")
    tokenizer = build_tokenizer(default.tokenizer, default.data)
    model = dataclasses.replace(QWEN, vocab_size=tokenizer.vocab_size)
    config = dataclasses.replace(load_config(TRAIN_CONFIG, ["tokenizer.template=chat"]), model=model)
    save_policy(tmp_path / "ck", config, init_policy(model, 0))
    tokenizer.save(tmp_path / "ck" / "tokenizer")
    assert load_checkpoint_config(tmp_path / "ck").tokenizer.template == "chat"
    prompts = ["Solve for x: 3x + 4 = 19.", "Compute {3} + 4", "unicode ✓ 日本語", ""]
    for out, extra, template in (("chat", [], "chat"), ("r1", ["--template", "r1_zero"], "r1_zero")):
        assert main(["export-hf", str(tmp_path / "ck"), str(tmp_path / out), *extra]) == 0
        assert f"renders the {template} prompt format" in capsys.readouterr().out
        theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / out)
        for prompt in prompts:
            user = [{"role": "user", "content": prompt}]
            ids = theirs.apply_chat_template(user, add_generation_prompt=True)["input_ids"]
            assert ids == render_prompt(tokenizer, template, prompt), (template, prompt)
        exported = load_tokenizer(tmp_path / out)  # r1jax reads its own export back: the same prompt ids
        assert [render_prompt(exported, name, p) for name in ("r1_zero", "none") for p in prompts] == [
            render_prompt(tokenizer, name, p) for name in ("r1_zero", "none") for p in prompts]
