"""export_hf's sharded layout, read back with safetensors itself and the raw file bytes (the hub's conventions,
which transformers' and r1jax's own readers do not check: both load every file the index names, whatever
tensor it maps to which file)."""

import json

import pytest
from safetensors import safe_open

from r1jax.model.factory import init_policy
from r1jax.model.hf_io import export_hf
from tests.model.tiny import QWEN

INDEX = "model.safetensors.index.json"


def layout(directory):
    """{file name: (tensor names, data bytes, header length, metadata)} of each *.safetensors file."""
    out = {}
    for path in sorted(directory.glob("*.safetensors")):
        raw = path.read_bytes()
        size = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + size])
        with safe_open(str(path), framework="numpy") as f:
            names = set(f.keys())
            metadata = f.metadata()
        data = sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__")
        out[path.name] = (names, data, size, metadata)
    return out


@pytest.fixture(scope="module")
def policy():
    return init_policy(QWEN, seed=0)


@pytest.mark.parametrize("limit", [10_000, 30_000])  # 10 kB: below the 16 kB embedding, the first tensor
def test_shards_are_named_from_1_within_the_limit_and_the_index_maps_each_tensor_to_its_file(policy, tmp_path, limit):
    export_hf(policy, tmp_path, max_shard_bytes=limit)
    files = layout(tmp_path)
    n = len(files)
    assert n > 2
    assert sorted(files) == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    index = json.loads((tmp_path / INDEX).read_text())
    for name, (tensors, data, header, metadata) in files.items():
        assert tensors, f"{name} holds no tensor"
        assert {t for t, f in index["weight_map"].items() if f == name} == tensors, name
        assert data <= limit or len(tensors) == 1, (name, data)  # a larger tensor alone
        assert (8 + header) % 8 == 0  # the data starts 8-byte aligned (the header padded with spaces)
        assert metadata == {"format": "pt"}  # transformers 4.x refuses a file without it
    assert index["metadata"]["total_size"] == sum(data for _, data, _, _ in files.values())


def test_two_shards_come_with_an_index(policy, tmp_path):
    export_hf(policy, tmp_path / "one")
    (single,) = layout(tmp_path / "one").items()
    assert single[0] == "model.safetensors" and not (tmp_path / "one" / INDEX).exists()
    total = single[1][1]
    export_hf(policy, tmp_path / "two", max_shard_bytes=total - 1)  # all but the last tensor, then it
    files = layout(tmp_path / "two")
    assert sorted(files) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    index = json.loads((tmp_path / "two" / INDEX).read_text())
    assert set(index["weight_map"].values()) == set(files)
    assert index["metadata"]["total_size"] == total


def test_a_shard_fills_up_to_exactly_the_limit(policy, tmp_path):
    export_hf(policy, tmp_path / "one", max_shard_bytes=10**9)
    raw = (tmp_path / "one" / "model.safetensors").read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    order = [(k, v["data_offsets"][1] - v["data_offsets"][0]) for k, v in header.items() if k != "__metadata__"]
    (first, a), (second, b) = order[:2]
    export_hf(policy, tmp_path / "split", max_shard_bytes=a + b)  # the first two tensors make the limit exactly
    files = layout(tmp_path / "split")
    assert files["model-00001-of-%05d.safetensors" % len(files)][0] == {first, second}


def test_an_export_dtype_it_cannot_write_is_a_user_error(policy, tmp_path):
    from r1jax.errors import UserError

    with pytest.raises(UserError, match="export dtype 'float16'"):
        export_hf(policy, tmp_path, dtype="float16")
    assert not list(tmp_path.iterdir())


def test_import_skips_the_tensors_transformers_skips_and_lists_long_names_briefly():
    import dataclasses

    from r1jax.model.hf_io import _ignored, _listing

    tied = dataclasses.replace(QWEN, tie_word_embeddings=True)
    assert _ignored("lm_head.weight", tied, 0) and not _ignored("lm_head.weight", QWEN, 0)
    last = QWEN.num_hidden_layers  # a multi-token-prediction layer follows the last decoder layer
    assert _ignored(f"model.layers.{last}.mlp.gate.weight", QWEN, 1)
    assert not _ignored(f"model.layers.{last - 1}.mlp.gate.weight", QWEN, 1)
    assert not _ignored(f"model.layers.{last}.mlp.gate.weight", QWEN, 0)
    names = [f"t{i}" for i in range(25)]
    assert _listing("missing", names) == f"missing (25): {', '.join(names[:20])} ... and 5 more"
    assert _listing("missing", names[:20]) == f"missing (20): {', '.join(names[:20])}"


def test_a_tensor_of_the_wrong_shape_is_named_before_anything_is_read(policy, tmp_path):
    import numpy as np
    from safetensors.numpy import load_file, save_file

    from r1jax.errors import UserError
    from r1jax.model.hf_checkpoint import HFCheckpoint
    from r1jax.model.hf_io import import_params

    export_hf(policy, tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = load_file(str(path))
    tensors["model.norm.weight"] = np.ones(QWEN.hidden_size + 1, np.float32)
    save_file(tensors, str(path), metadata={"format": "pt"})
    with pytest.raises(UserError, match=rf"wrong shape \(1\): model.norm.weight \[{QWEN.hidden_size + 1}\] "
                                        rf"\(expected \[{QWEN.hidden_size}\]\)"):
        import_params(HFCheckpoint(tmp_path), QWEN)
