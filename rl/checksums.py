"""Checksums of a checkpoint's trees, saved beside them (the item `checksums`) and checked when they are restored.

Storage that flips bits (a failing disk, a copy gone wrong) restored garbage weights without a word: a reviewer's
64 flipped bytes in one params data file read back as values up to 1.5e38, and `r1jax generate` exited 0 with
degenerate samples. Each leaf's checksum is the wrapping uint32 sum of its 32-bit words (narrower dtypes widened
word by word), each times an odd number hashed from its flat position: one flipped bit always changes it (an odd
multiple of a power of two below 2^32), as do most swaps of words. An integer sum is exact whatever the order of
the reduction, so it is the same for any sharding of the leaf, and each device sums its own share (the positions
are built in the leaf's shape: nothing is gathered). Computed on the devices, a pass over the leaves' bytes;
checked only for leaves restored in the dtype and shape they were saved in (a restore that casts
changes the bytes), and not for checkpoints saved before 2026-12-05 (no such item).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp

ITEM = "checksums"


def _words(x: jax.Array) -> jax.Array:
    """`x`'s bytes as uint32 words (one per element up to 4 bytes, two for 8)."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _flat_positions(shape: tuple[int, ...]) -> jax.Array:
    """Each element's row-major flat index (mod 2^32), built in `shape` itself: a `reshape(-1)` of a leaf split
    over a minor axis (fsdp's embed, the experts' axes) gathered the whole leaf onto every device first."""
    position, stride = jnp.zeros(shape, jnp.uint32), 1
    for axis in reversed(range(len(shape))):
        position = position + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride % 2**32)
        stride *= shape[axis]
    return position


@jax.jit
def _sums(leaves: list) -> list:
    def one(x):
        words = _words(x)
        odd = _flat_positions(words.shape) * jnp.uint32(0x9E3779B9) | jnp.uint32(1)
        return jnp.sum(words * odd, dtype=jnp.uint32)
    return [one(x) for x in leaves]


def _leaves(tree) -> dict[str, Any]:
    return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _is_array(leaf) -> bool:
    return hasattr(leaf, "dtype") and hasattr(leaf, "shape")


def _described(leaves: Mapping[str, Any]) -> dict[str, list]:
    """{leaf path: [dtype, shape, checksum]} of array leaves."""
    arrays = {path: leaf for path, leaf in leaves.items() if _is_array(leaf)}
    sums = jax.device_get(_sums([jnp.asarray(leaf) for leaf in arrays.values()]))
    return {path: [str(leaf.dtype), list(leaf.shape), int(total)] for (path, leaf), total in zip(arrays.items(), sums)}


def checksums(trees: Mapping[str, Any]) -> dict[str, dict[str, list]]:
    """{tree name: {leaf path: [dtype, shape, checksum]}}: the JSON a save writes as the item ITEM."""
    return {name: _described(_leaves(tree)) for name, tree in trees.items()}


def damaged_leaves(step_dir: pathlib.Path, restored: Mapping[str, Any]) -> dict[str, list[str]]:
    """{tree name: leaf paths whose bytes differ from what was saved} of the trees of `restored` (none when the
    step has no such item); {ITEM: []} when the item itself cannot be read, {ITEM: [tree names]} when it lacks
    restored trees, {ITEM: ["tree['leaf']", ...]} when it lacks restored arrays: every save writes the checksum
    of each array of each tree it saves, so an array without one (an item replaced by `{}`, or by
    `{"params": {}}`) is damage, not an array to restore unchecked."""
    saved_file = step_dir / ITEM / "metadata"
    if not saved_file.is_file():
        return {}
    try:
        saved = json.loads(saved_file.read_bytes())
        valid = all(isinstance(v, list) and len(v) == 3 for sums in saved.values() for v in sums.values())
    except (ValueError, AttributeError):  # not JSON, or not the shape a save writes
        valid = False
    if not valid:
        return {ITEM: []}
    missing = [name for name in restored if name not in saved]
    if missing:
        return {ITEM: missing}
    unsummed = [f"{name}{path}" for name, tree in restored.items() for path, leaf in _leaves(tree).items()
                if _is_array(leaf) and path not in saved[name]]
    if unsummed:  # (an item naming a tree but not its arrays: `{"params": {}}` restored every array unchecked)
        return {ITEM: unsummed}
    damaged = {}
    for name, tree in restored.items():
        now = _described({path: leaf for path, leaf in _leaves(tree).items() if path in saved[name]})
        bad = [path for path, (dtype, shape, total) in now.items()
               if [dtype, shape] == saved[name][path][:2] and total != saved[name][path][2]]
        if bad:
            damaged[name] = bad
    return damaged
