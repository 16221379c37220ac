"""Checkpoint checksums (rl.checksums): what they sum (against NumPy), the same for any sharding of a leaf, and
flipped bits in a saved step named on restore, by `r1jax generate` and by the trainer's checkpointer; a restore
that casts and a checkpoint saved before checksums restore as before."""

import json
import pathlib
import re
import shutil

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from r1jax.errors import UserError
from r1jax.rl import checksums
from r1jax.rl.cli.main import main
from r1jax.rl.config import load_config
from r1jax.rl.train.checkpointing import TrainCheckpointer

from tests.rl.conftest import TRAIN_CONFIG


def numpy_checksum(words: np.ndarray) -> int:
    odd = (np.arange(words.size, dtype=np.uint64) * 0x9E3779B9 | 1) % 2**32
    return int(np.sum(words.reshape(-1).astype(np.uint64) * odd % 2**32) % 2**32)


def test_a_leafs_checksum_is_its_words_times_odd_position_hashes_whatever_its_sharding():
    x = np.random.default_rng(0).standard_normal((8, 6)).astype(np.float32)
    half = np.arange(10, dtype=np.float16)
    flags = np.array([True, False, True])
    mesh = Mesh(np.asarray(jax.devices()[:4]).reshape(2, 2), ("a", "b"))
    sharded = jax.device_put(x, NamedSharding(mesh, P("a", "b")))
    sums = checksums.checksums({"t": {"x": x, "sharded": sharded, "half": half, "flags": flags}})["t"]
    assert sums["['x']"] == ["float32", [8, 6], numpy_checksum(x.view(np.uint32))]
    assert sums["['sharded']"] == sums["['x']"]
    assert sums["['half']"] == ["float16", [10], numpy_checksum(half.view(np.uint16).astype(np.uint32))]
    assert sums["['flags']"][2] == numpy_checksum(flags.astype(np.uint32))
    flipped = x.copy()
    flipped.view(np.uint32)[3, 2] ^= 1 << 31  # one bit
    swapped = x.copy()
    swapped[0, 0], swapped[0, 1] = x[0, 1], x[0, 0]
    again = checksums.checksums({"t": {"flipped": flipped, "swapped": swapped}})["t"]
    assert again["['flipped']"][2] != sums["['x']"][2] and again["['swapped']"][2] != sums["['x']"][2]


def flip_bytes(item: pathlib.Path) -> None:
    """64 bytes in the middle of the item's largest data file inverted (a reviewer's damage, 2026-12-05)."""
    data = max((item / "ocdbt.process_0" / "d").iterdir(), key=lambda p: p.stat().st_size)
    content = bytearray(data.read_bytes())
    middle = len(content) // 2
    content[middle:middle + 64] = bytes(b ^ 0xFF for b in content[middle:middle + 64])
    data.write_bytes(bytes(content))


def test_generate_names_a_step_whose_params_bits_flipped(capsys, tmp_path):
    root = tmp_path / "ck"
    assert main(["init", str(TRAIN_CONFIG), str(root)]) == 0
    flip_bytes(root / "0" / "params")
    capsys.readouterr()
    assert main(["generate", str(root), "--ids", "1,2", "--max-new-tokens", "2", "--json"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and f"checkpoint {root / '0'} is damaged: the item 'params' does not hold what was " \
                              "saved (its checksum differs for 1 array(s): " in out.err


@pytest.fixture()
def saved(tmp_path):
    """A trainer's step 1 with a params array large enough for its own data chunk (not inlined in the index)."""
    checkpointer = TrainCheckpointer(tmp_path / "checkpoints", keep=2, keep_best=0, async_save=False)
    w = np.random.default_rng(1).standard_normal((128, 64)).astype(np.float32)
    checkpointer.save(1, load_config(TRAIN_CONFIG), {"params": {"w": w}}, {"global_step": 1})
    checkpointer.close()
    return tmp_path / "checkpoints", w


def restore(root, dtype=np.float32):
    checkpointer = TrainCheckpointer(root, keep=2, keep_best=0, async_save=False)
    try:
        return checkpointer.restore_trees(1, {"params": {"w": np.zeros((128, 64), dtype)}})["params"]["w"]
    finally:
        checkpointer.close()


def test_a_resume_from_a_step_whose_bits_flipped_is_refused_naming_the_array(saved):
    root, w = saved
    np.testing.assert_array_equal(np.asarray(restore(root)), w)
    shutil.copytree(root / "1", root.parent / "intact")
    flip_bytes(root / "1" / "params")
    with pytest.raises(UserError) as info:
        restore(root)
    assert str(info.value).startswith(f"checkpoint {root / '1'} is damaged: the item 'params' does not hold what "
                                      "was saved (its checksum differs for 1 array(s): ['w']);")
    shutil.rmtree(root / "1")
    shutil.copytree(root.parent / "intact", root / "1")
    import jax.numpy as jnp
    cast = restore(root, jnp.bfloat16)  # restored in another dtype: other bytes, not damage
    np.testing.assert_array_equal(np.asarray(cast), w.astype(jnp.bfloat16))
    (root / "1" / checksums.ITEM / "metadata").write_text("{not json")
    with pytest.raises(UserError, match=r"is damaged: the item 'checksums' cannot be read \(not the JSON"):
        restore(root)
    shutil.rmtree(root / "1" / checksums.ITEM)  # a step saved before checksums
    np.testing.assert_array_equal(np.asarray(restore(root)), w)


def test_the_checksum_of_a_leaf_split_on_a_minor_axis_gathers_nothing():
    """Flattened first, a leaf split over any axis but the first (fsdp's embed, the experts' axes) was gathered
    whole onto every device, in uint32, at every save and restore (a reviewer: 8 all-gathers and about the whole
    model's bytes per device on the tiny preset at fsdp 8)."""
    mesh = Mesh(np.asarray(jax.devices()[:8]), ("fsdp",))
    leaf = jax.device_put(np.ones((64, 4096), np.float32), NamedSharding(mesh, P(None, "fsdp")))
    compiled = checksums._sums.lower([leaf]).compile()
    assert "all-gather" not in compiled.as_text()
    assert compiled.memory_analysis().temp_size_in_bytes < 2 * leaf.addressable_shards[0].data.nbytes
    ones = np.ones((64, 4096), np.float32)
    assert int(jax.device_get(checksums._sums([leaf]))[0]) == numpy_checksum(ones.view(np.uint32))


def test_a_key_leaf_is_summed_as_its_key_data_and_non_array_leaves_are_skipped():
    key = jax.random.key(7)
    sums = checksums.checksums({"t": {"key": key, "count": 3, "name": "x"}})["t"]
    data = np.asarray(jax.random.key_data(key))
    assert list(sums) == ["['key']"] and sums["['key']"][2] == numpy_checksum(data.view(np.uint32))


def saved_checksums(tmp_path, text):
    (tmp_path / checksums.ITEM).mkdir(exist_ok=True)
    (tmp_path / checksums.ITEM / "metadata").write_text(text)
    return tmp_path


def test_a_tree_the_saved_checksums_do_not_cover_is_damage(tmp_path):
    """Every save writes the checksums of each tree it saves: a restored tree the item lacks (an item replaced by
    `{}`) restored unchecked, with no word said."""
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    step = saved_checksums(tmp_path, json.dumps(checksums.checksums({"params": {"w": w}})))
    bad = w.copy()
    bad[1, 2] = -1.0
    assert checksums.damaged_leaves(step, {"params": {"w": w}, "opt_state": {"mu": bad}}) == \
        {checksums.ITEM: ["opt_state"]}
    assert checksums.damaged_leaves(step, {"params": {"w": bad}}) == {"params": ["['w']"]}
    # the item names the tree but lacks some of its arrays: those restored unchecked before
    for text in ('{"params": {}}', json.dumps(checksums.checksums({"params": {"v": w}}))):
        saved_checksums(tmp_path, text)
        assert checksums.damaged_leaves(step, {"params": {"w": bad, "n": 3}}) == {checksums.ITEM: ["params['w']"]}


def test_generate_names_a_step_whose_checksums_item_is_emptied(capsys, tmp_path):
    root = tmp_path / "ck"
    assert main(["init", str(TRAIN_CONFIG), str(root)]) == 0
    (root / "0" / checksums.ITEM / "metadata").write_text("{}")
    capsys.readouterr()
    assert main(["generate", str(root), "--ids", "1,2", "--max-new-tokens", "2", "--json"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.strip().endswith(f"checkpoint {root / '0'} is damaged: the item 'checksums' "
                                                      "holds no checksums of the item 'params' (every save writes "
                                                      "them)")
    (root / "0" / checksums.ITEM / "metadata").write_text('{"params": {}}')
    assert main(["generate", str(root), "--ids", "1,2", "--max-new-tokens", "2", "--json"]) == 2
    err = capsys.readouterr().err.strip()
    assert re.search(r"is damaged: the item 'checksums' holds no checksums of \d+ array\(s\): params\['.+ \.\.\. "
                     r"\(every save writes them\)$", err), err


@pytest.mark.parametrize("text", ["[1, 2]", '{"params": [1]}', '{"params": {"[\'w\']": 5}}',
                                  '{"params": {"[\'w\']": ["float32", [2, 3]]}}'])
def test_a_checksums_item_not_in_the_shape_a_save_writes_is_unreadable(tmp_path, text):
    w = np.zeros((2, 3), np.float32)
    assert checksums.damaged_leaves(saved_checksums(tmp_path, text), {"params": {"w": w}}) == {checksums.ITEM: []}
