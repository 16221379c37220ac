"""A stage that starts from a Hugging Face directory takes the architecture from its config.json
(rl.hf_architecture): through `load_config`, `r1jax info`, preflight and the import; `import-hf` and `init_from`
keep a bfloat16 checkpoint in bfloat16 unless the config names another param_dtype."""

import json

import jax
import numpy as np
import pytest
import torch
import transformers
import yaml
from flax import nnx

from r1jax.errors import UserError
from r1jax.model.factory import count_params
from r1jax.model.hf_config import architecture_fields
from r1jax.rl.checkpoint import load_policy
from r1jax.rl.cli.main import main
from r1jax.rl.config import config_from_dicts, load_config, to_dict
from r1jax.rl.hf_policy import import_hf_policy
from r1jax.rl.train.preflight import check_init_from
from r1jax.model.tokenizer import load_tokenizer
from tests.model.hf_models import random_hf_model
from tests.model.hf_tokenizer_files import write_hf_tokenizer
from tests.model.tiny import DEEPSEEK, QWEN

torch.set_num_threads(1)  # torch's threads spinning beside XLA's slow both down on a small machine
R1JAX_ONLY = {"param_dtype": "float32", "compute_dtype": "bfloat16", "remat": True, "moe_block_size": 16}


def save_bfloat16(cfg, directory, tmp_path):
    """A random transformers model of `cfg` saved as the hub stores one: bfloat16 weights."""
    random_hf_model(cfg, seed=3).save_pretrained(tmp_path / "f32")
    transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "f32", dtype=torch.bfloat16).save_pretrained(
        directory)
    return directory


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hf")
    return save_bfloat16(QWEN, tmp / "qwen", tmp)


def write_yaml(path, model=None):
    body = {"stages": [{"name": "grpo", "kind": "grpo", "steps": 1}]}
    path.write_text(yaml.safe_dump(body if model is None else {"model": model, **body}))
    return path


def leaves(policy):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(policy))]


def test_a_config_without_architecture_takes_the_checkpoints(hf_dir, tmp_path, capsys):
    config_path = write_yaml(tmp_path / "run.yaml", R1JAX_ONLY)
    assert load_config(config_path).model.hidden_size == 64  # the schema's default: nothing from the checkpoint
    config = load_config(config_path, [f"stages.0.init_from={hf_dir}"])
    for name in architecture_fields("qwen3_moe"):
        assert getattr(config.model, name) == getattr(QWEN, name), name
    for name, value in R1JAX_ONLY.items():  # r1jax's own fields as the YAML gives them
        assert getattr(config.model, name) == value, name
    assert json.loads((hf_dir / "config.json").read_text())["dtype"] == "bfloat16"  # given float32 above
    assert config_from_dicts(to_dict(config)) == config  # the resolved config is a plain config (run dirs)

    assert main(["info", str(config_path), f"stages.0.init_from={hf_dir}"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["hidden_size"], report["vocab_size"]) == (QWEN.hidden_size, QWEN.vocab_size)
    assert report["params_total"] == count_params(QWEN)["params_total"]


def test_an_architecture_field_that_contradicts_the_checkpoint_is_named(hf_dir, tmp_path, capsys):
    config_path = write_yaml(tmp_path / "run.yaml", {"hidden_size": 64, "num_hidden_layers": QWEN.num_hidden_layers})
    with pytest.raises(UserError) as err:
        load_config(config_path, [f"stages.0.init_from={hf_dir}"])
    message = str(err.value)
    assert f"stages[grpo].init_from='{hf_dir}'" in message
    assert f"model.hidden_size: {config_path} says 64, {hf_dir / 'config.json'} says {QWEN.hidden_size}" in message
    assert "num_hidden_layers" not in message  # given, and the checkpoint's own value

    matching = write_yaml(tmp_path / "same.yaml", {"hidden_size": QWEN.hidden_size, "family": "qwen3_moe"})
    assert load_config(matching, [f"stages.0.init_from={hf_dir}"]).model.hidden_size == QWEN.hidden_size
    with pytest.raises(UserError, match=r"model.num_experts_per_tok: override 'model.num_experts_per_tok=4' says 4"):
        load_config(matching, [f"stages.0.init_from={hf_dir}", "model.num_experts_per_tok=4"])
    assert main(["info", str(config_path), f"stages.0.init_from={hf_dir}"]) == 2
    assert "model.hidden_size" in capsys.readouterr().err


def test_param_dtype_is_the_checkpoints_unless_the_config_gives_one(hf_dir, tmp_path):
    bare = write_yaml(tmp_path / "bare.yaml")
    assert load_config(bare, [f"stages.0.init_from={hf_dir}"]).model.param_dtype == "bfloat16"
    widened = load_config(bare, [f"stages.0.init_from={hf_dir}", "model.param_dtype=float32"])
    assert widened.model.param_dtype == "float32"
    narrow = import_hf_policy(hf_dir, load_config(bare, [f"stages.0.init_from={hf_dir}"]).model)
    wide = import_hf_policy(hf_dir, widened.model)  # what a stage starting there with float32 imports
    assert {x.dtype for x in leaves(narrow)} == {np.dtype("bfloat16")}
    assert {x.dtype for x in leaves(wide)} == {np.dtype("float32")}
    for a, b in zip(leaves(narrow), leaves(wide)):
        assert a.astype(np.float32).tobytes() == b.tobytes()  # widened exactly


def test_preflight_and_the_import_check_the_stage_model(hf_dir, tmp_path):
    # the directory holds weights only: tokenizer.path names the tokenizer (else the run is refused)
    tokenizer_dir = write_hf_tokenizer(tmp_path / "tokenizer", "qwen")
    config = load_config(write_yaml(tmp_path / "run.yaml"), [f"stages.0.init_from={hf_dir}",
                                                             f"tokenizer.path={tokenizer_dir}"])
    tokenizer = load_tokenizer(tokenizer_dir)
    check_init_from(config, 0, tokenizer)
    unresolved = config_from_dicts({"tokenizer": {"path": str(tokenizer_dir)},
                                    "stages": [{"name": "grpo", "init_from": str(hf_dir)}]})  # schema model
    with pytest.raises(UserError, match=r"stages\[grpo\].init_from=.*model.hidden_size: the config says 64"):
        check_init_from(unresolved, 0, tokenizer)
    with pytest.raises(UserError, match="model.hidden_size: the config says 64"):
        import_hf_policy(hf_dir, unresolved.model)


def test_stages_from_different_architectures_are_refused(hf_dir, tmp_path):
    other = save_bfloat16(DEEPSEEK, tmp_path / "deepseek", tmp_path)
    stages = f"stages=[{{name: a, init_from: {hf_dir}}}, {{name: b, init_from: {other}}}]"
    with pytest.raises(UserError, match=r"stages\[b\].init_from=.*differs from that of stages\[a\]"):
        load_config(write_yaml(tmp_path / "run.yaml"), [stages])


def test_import_hf_keeps_bfloat16_unless_told(hf_dir, tmp_path, capsys):
    assert main(["import-hf", str(hf_dir), str(tmp_path / "ck")]) == 0
    config, policy = load_policy(tmp_path / "ck")
    assert config.model.param_dtype == "bfloat16" and {x.dtype for x in leaves(policy)} == {np.dtype("bfloat16")}
    assert main(["import-hf", str(hf_dir), str(tmp_path / "ck32"), "model.param_dtype=float32"]) == 0
    config, wide = load_policy(tmp_path / "ck32")
    assert config.model.param_dtype == "float32"
    for a, b in zip(leaves(policy), leaves(wide)):
        assert a.astype(np.float32).tobytes() == b.tobytes()
    assert main(["import-hf", str(hf_dir), str(tmp_path / "bad"), "model.hidden_size=64"]) == 2
    assert "model.hidden_size: override 'model.hidden_size=64' says 64" in capsys.readouterr().err


# config.json of Qwen/Qwen3-30B-A3B-Base as published (https://huggingface.co/Qwen/Qwen3-30B-A3B-Base)
QWEN3_30B_A3B_BASE = {
    "architectures": ["Qwen3MoeForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 151643, "decoder_sparse_step": 1, "eos_token_id": 151643, "head_dim": 128, "hidden_act": "silu",
    "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 6144, "max_position_embeddings": 32768,
    "max_window_layers": 48, "mlp_only_layers": [], "model_type": "qwen3_moe", "moe_intermediate_size": 768,
    "norm_topk_prob": True, "num_attention_heads": 32, "num_experts": 128, "num_experts_per_tok": 8,
    "num_hidden_layers": 48, "num_key_value_heads": 4, "output_router_logits": False, "rms_norm_eps": 1e-06,
    "rope_scaling": None, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001, "sliding_window": None,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.51.0", "use_cache": True,
    "use_sliding_window": False, "vocab_size": 151936}


def test_the_r1zero_config_agrees_with_the_base_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(QWEN3_30B_A3B_BASE))  # compile needs no weights
    shipped = load_config("qwen3_30b_a3b_r1zero")
    config = load_config("qwen3_30b_a3b_r1zero", [f"stages.0.init_from={tmp_path}"])
    assert config.model == shipped.model  # every architecture field agrees; param_dtype stays the YAML's
    assert (config.model.param_dtype, config.optimizer.state_dtype, config.model.compute_dtype) == (
        "float32", "float32", "bfloat16")
    g, o = config.grpo, config.optimizer
    assert (config.tokenizer.template, g.group_size, g.prompts_per_step, g.temperature, g.kl_coef,
            g.ref_reset_every, g.clip_low, g.clip_high, o.lr) == ("r1_zero", 16, 32, 1.0, 0.001, 400, 0.2, 0.2, 3e-6)
    instruct = {**QWEN3_30B_A3B_BASE, "max_position_embeddings": 40960, "eos_token_id": 151645}
    (tmp_path / "config.json").write_text(json.dumps(instruct))  # the post-trained model is another checkpoint
    with pytest.raises(UserError, match="model.max_position_embeddings: .* says 32768, .* says 40960"):
        load_config("qwen3_30b_a3b_r1zero", [f"stages.0.init_from={tmp_path}"])


def test_a_contradicted_field_the_config_json_does_not_state_is_named_as_unstated(hf_dir, tmp_path):
    # config.json lost hidden_size: the run's 32 was said to contradict "config.json says 2048", a value the
    # file never held (transformers' default)
    import shutil

    directory = tmp_path / "hf"
    shutil.copytree(hf_dir, directory)
    config = json.loads((directory / "config.json").read_text())
    del config["hidden_size"]
    (directory / "config.json").write_text(json.dumps(config))
    config_path = write_yaml(tmp_path / "run.yaml", {"hidden_size": QWEN.hidden_size})
    with pytest.raises(UserError) as err:
        load_config(config_path, [f"stages.0.init_from={directory}"])
    assert (f"model.hidden_size: {config_path} says {QWEN.hidden_size}, {directory / 'config.json'} does not state "
            f"hidden_size (transformers' default 2048)") in str(err.value), str(err.value)
