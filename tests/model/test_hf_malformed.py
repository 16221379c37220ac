"""A malformed Hugging Face checkpoint is a UserError naming the file (and key), never a raw traceback:
through `r1jax import-hf` (exit code 2) and through `model.hf_config.from_hf_config` itself."""

import json
import shutil

import pytest
import torch

from r1jax.errors import UserError
from r1jax.model.hf_config import from_hf_config, to_hf_config
from r1jax.model.hf_io import INDEX_FILE
from r1jax.rl.cli.main import main
from r1jax.rl.hf_policy import load_hf_policy
from tests.model.hf_models import random_hf_model, read_safetensors
from tests.model.tiny import DEEPSEEK, QWEN

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A tiny Qwen3-MoE checkpoint in several shards with an index, as transformers saves it."""
    directory = tmp_path_factory.mktemp("hf") / "qwen"
    random_hf_model(QWEN, seed=3).save_pretrained(directory, max_shard_size="40KB")
    assert (directory / INDEX_FILE).is_file()
    return directory


def write(name, text):
    def damage(directory):
        (directory / name).write_text(text)
        return name
    return damage


def truncate_second_shard(directory):
    shard = sorted(directory.glob("model-*.safetensors"))[1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    return shard.name


def string_hidden_size(directory):
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "hidden_size": "32"}))
    return "config.json"


def unknown_dtype(directory):
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "dtype": "banana"}))
    return "config.json"


def unindexed(make):
    """The shards and index replaced by one entry `make` makes (a directory or a link named like a shard)."""
    def damage(directory):
        for file in [directory / INDEX_FILE, *directory.glob("*.safetensors")]:
            file.unlink()
        return make(directory)
    return damage


def shard_directory(directory):
    (directory / "model.safetensors").mkdir()
    return "model.safetensors"


def broken_link(directory):
    (directory / "model-00001-of-00002.safetensors").symlink_to(directory / "gone.safetensors")
    return "model-00001-of-00002.safetensors"


CASES = {  # name: (damage(directory) -> the file the error names, what it says)
    "shard_is_a_directory": (unindexed(shard_directory), "not a readable safetensors file (a directory)"),
    "shard_is_a_broken_link": (unindexed(broken_link), "not a readable safetensors file (a broken link)"),
    "index_not_json": (write(INDEX_FILE, "{"), "not valid JSON"),
    "index_without_weight_map": (write(INDEX_FILE, '{"metadata": {}}'), "no 'weight_map' object"),
    "truncated_shard": (truncate_second_shard, "not a complete safetensors file"),
    "config_is_a_list": (write("config.json", "[]"), "expected a JSON object ({...}), found a list"),
    "hidden_size_a_string": (string_hidden_size, 'hidden_size is "32" (expected an integer)'),
    "dtype_unknown": (unknown_dtype, 'dtype is "banana" (expected one of "float32", "bfloat16", "float16", '
                                     '"float64", "float8_e4m3fn", "float8_e5m2" or null'),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_malformed_checkpoint_is_a_user_error_naming_the_file(case, sharded, tmp_path, capsys):
    damage, message = CASES[case]
    directory = tmp_path / "hf"
    shutil.copytree(sharded, directory)
    named = damage(directory)
    assert main(["import-hf", str(directory), str(tmp_path / "ck")]) == 2
    err = capsys.readouterr().err
    assert f"{directory / named}: " in err and message in err, err
    assert "Traceback" not in err


def test_a_checkpoint_path_that_is_a_file_or_missing_is_named(sharded, tmp_path, capsys):
    assert main(["import-hf", str(sharded / "config.json"), str(tmp_path / "a")]) == 2
    assert "is a file, not a checkpoint directory" in capsys.readouterr().err
    assert main(["import-hf", str(tmp_path / "nowhere"), str(tmp_path / "b")]) == 2
    assert "nowhere': does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("make, said", [(lambda path: path.mkdir(), "config.json is a directory, not a file"),
                                        (lambda path: path.symlink_to(path.parent / "gone.json"),
                                         "config.json is a symlink to '{dir}/gone.json', which does not exist")])
def test_a_config_json_that_is_no_file_is_named_as_what_it_is(tmp_path, capsys, make, said):
    """Either was "no config.json", though the listing shows one."""
    (tmp_path / "hf").mkdir()
    make(tmp_path / "hf" / "config.json")
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"r1jax import-hf: error: HF checkpoint {str(tmp_path / 'hf')!r}: " \
        + said.format(dir=tmp_path / "hf"), err


@pytest.mark.parametrize("cfg", [QWEN, DEEPSEEK])
def test_every_key_of_the_wrong_type_is_named(cfg):
    hf = to_hf_config(cfg)
    assert from_hf_config(hf)[0].hidden_size == cfg.hidden_size  # as exported: accepted
    bad = {**hf, "num_hidden_layers": 2.0, "tie_word_embeddings": "no", "rope_parameters": "default",
           "rms_norm_eps": None, "num_nextn_predict_layers": "1"}
    with pytest.raises(UserError) as err:
        from_hf_config(bad, source="cfg.json")
    assert str(err.value).startswith("cfg.json: values of the wrong type: rope_parameters is")  # checked first
    hf_only = {**hf, "rope_parameters": {"rope_type": "default", "rope_theta": "1e4"}}
    with pytest.raises(UserError, match=r'rope_theta is "1e4" \(expected a number\)'):
        from_hf_config(hf_only)
    del bad["rope_parameters"], bad["num_nextn_predict_layers"]
    with pytest.raises(UserError) as err:
        from_hf_config(bad)
    for named in ("num_hidden_layers is 2.0 (expected an integer)", 'tie_word_embeddings is "no" (expected true '
                  "or false)", "rms_norm_eps is null (expected a number)"):
        assert named in str(err.value)
    experts = "num_experts" if cfg.family == "qwen3_moe" else "n_routed_experts"
    with pytest.raises(UserError, match=f"{experts} is \\[8\\]"):  # named by the key config.json gives
        from_hf_config({**hf, experts: [8]})
    with pytest.raises(UserError, match="expected a JSON object"):
        from_hf_config([hf])


@pytest.mark.parametrize("cfg", [QWEN, DEEPSEEK])
def test_a_zero_head_count_is_named(cfg):
    hf = {key: value for key, value in to_hf_config(cfg).items() if key != "head_dim"}
    # Qwen's head_dim = hidden_size // heads was a ZeroDivisionError before the config's own check
    with pytest.raises(UserError, match="num_attention_heads"):
        from_hf_config({**hf, "num_attention_heads": 0})


def test_a_weight_stored_as_integers_is_refused(sharded, tmp_path, capsys):
    """An int8 embedding imported as its codes (exit 0, a warning advising param_dtype float32 it had)."""
    from safetensors.numpy import load_file, save_file

    directory = tmp_path / "hf"
    shutil.copytree(sharded, directory)
    shard = next(f for f in sorted(directory.glob("*.safetensors")) if "model.embed_tokens.weight" in load_file(f))
    tensors = load_file(shard)
    tensors["model.embed_tokens.weight"] = tensors["model.embed_tokens.weight"].astype("int8")
    save_file(tensors, shard, metadata={"format": "pt"})
    assert main(["import-hf", str(directory), str(tmp_path / "ck")]) == 2
    err = capsys.readouterr().err
    assert "tensors not stored as floats (1): model.embed_tokens.weight (I8)" in err and "Traceback" not in err, err


def _edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def test_layers_past_num_hidden_layers_without_mtp_are_unexpected(tmp_path):
    # a config.json saying fewer layers than the weights hold (no multi-token prediction): the import kept the
    # first layers and dropped the rest without a word
    hf = random_hf_model(QWEN, seed=3)
    hf.save_pretrained(tmp_path)
    _edit_config(tmp_path, num_hidden_layers=QWEN.num_hidden_layers - 1)
    with pytest.raises(UserError, match=rf"unexpected tensors \(\d+\): model.layers.{QWEN.num_hidden_layers - 1}\."):
        load_hf_policy(tmp_path)


def test_non_empty_shared_experts_under_a_config_without_them_are_unexpected(tmp_path):
    # only transformers' zero-wide shared experts are no weights; real ones must not vanish
    assert DEEPSEEK.n_shared_experts > 0
    hf = random_hf_model(DEEPSEEK, seed=6)
    hf.save_pretrained(tmp_path)
    assert any(".shared_experts." in n and v.size for n, v in read_safetensors(tmp_path).items())
    _edit_config(tmp_path, n_shared_experts=0)
    with pytest.raises(UserError, match=r"unexpected tensors \(\d+\): .*shared_experts"):
        load_hf_policy(tmp_path)


def test_the_zero_wide_shared_experts_transformers_saves_without_shared_experts_are_no_weights(tmp_path):
    # transformers builds DeepSeek's shared experts even with n_shared_experts 0, zero wide, and saves them: a
    # checkpoint it wrote imports, and its other weights arrive
    import dataclasses

    hf = random_hf_model(dataclasses.replace(DEEPSEEK, n_shared_experts=0), seed=6)
    hf.save_pretrained(tmp_path)
    saved = read_safetensors(tmp_path)
    assert any(".shared_experts." in n and v.size == 0 for n, v in saved.items())
    config, policy = load_hf_policy(tmp_path)
    assert config.model.n_shared_experts == 0
    assert (abs(policy.embed_tokens[...] - saved["model.embed_tokens.weight"]) < 1e-6).all()


def test_tensors_holding_nan_or_infinity_are_named(tmp_path, capsys):
    # a damaged download or a bad conversion: imported without a word before, every logit then NaN
    from safetensors.torch import load_file, save_file

    random_hf_model(DEEPSEEK, seed=6).save_pretrained(tmp_path)
    (file,) = tmp_path.glob("*.safetensors")
    tensors = load_file(file)
    expert = "model.layers.1.mlp.experts.3.up_proj.weight"  # one expert of a stacked parameter
    tensors[expert][0, 1] = float("nan")
    tensors["model.norm.weight"][2] = float("inf")
    save_file(tensors, file, metadata={"format": "pt"})
    with pytest.raises(UserError, match=r"holds NaN or infinite values: tensors \(2\): model.layers.1.mlp.experts.3."
                                        r"up_proj.weight, model.norm.weight$"):
        load_hf_policy(tmp_path)
    assert main(["import-hf", str(tmp_path), str(tmp_path / "out")]) == 2
    assert "holds NaN or infinite values" in capsys.readouterr().err and not (tmp_path / "out").exists()



@pytest.mark.parametrize("key, named, default", [("hidden_size", "hidden_size", 2048),
                                                 ("num_local_experts", "num_experts or num_local_experts", 128)])
def test_a_size_key_the_config_lacks_is_named_beside_the_tensors_it_contradicts(key, named, default, sharded,
                                                                                  tmp_path, capsys):
    # the key took transformers' default and the error listed only tensors of the wrong shape (or missing ones),
    # never the key: the user had to guess which line of config.json was gone
    directory = tmp_path / "hf"
    shutil.copytree(sharded, directory)
    config = json.loads((directory / "config.json").read_text())
    stated = config.pop(key)
    (directory / "config.json").write_text(json.dumps(config))
    assert main(["import-hf", str(directory), str(tmp_path / "ck")]) == 2
    err = capsys.readouterr().err
    assert f"does not match its config.json: config.json does not state {named} (transformers' default {default}); " \
        in err and "Traceback" not in err, err
    _edit_config(directory, **{key: stated + 1})  # a complete config.json its tensors contradict names no key
    with pytest.raises(UserError, match="does not match its config.json") as intact:
        load_hf_policy(directory)
    assert "does not state" not in str(intact.value)
