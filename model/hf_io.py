"""Hugging Face checkpoints in and out: streaming safetensors export, lazy sharded import.

Export (`export_hf`) walks `hf_weights.tensor_map` one HF tensor at a time. Each tensor is cut out of its
stacked, possibly sharded and multi-host parameter on the devices (`_gather`: a shard_map in which the
devices holding the wanted layer/expert contribute it bit for bit and the other dimensions are
all-gathered), so every process receives exactly that one tensor, replicated; nothing larger than one
tensor is ever gathered. Process 0 writes it straight into its shard file, whose safetensors header was
written first (every shape is known in advance), so host memory stays near one tensor. Files: config.json,
generation_config.json, `model.safetensors` or `model-0000i-of-0000n.safetensors` shards of at most
`max_shard_bytes` plus `model.safetensors.index.json`. DeepSeek-V3's router (`mlp.gate.weight` and
`mlp.gate.e_score_correction_bias`) is always float32, as transformers keeps it (`_keep_in_fp32_modules_strict`).

Import (`read_hf_config` gives the ModelConfig, `import_params` the Policy; `rl.hf_policy` builds a run config
from them) reads tensors lazily (`hf_checkpoint.HFCheckpoint`; a malformed file is a UserError naming it).
Each parameter is assembled per distinct device shard: only the HF tensors that intersect the shard are read,
sliced and put on the devices holding it, so host memory stays near one device shard plus one HF tensor and
each process reads only what its devices hold (a tensor shared by several shards is read once per shard; the
OS page cache absorbs the repeats). Each tensor takes its parameter's dtype: param_dtype (by default the
config's), but float32 for DeepSeek-V3's router weight and bias whatever param_dtype, as transformers keeps
them. A tensor stored wider than its parameter (in a bfloat16 checkpoint, a float32 tensor other than those;
every tensor of a float64 checkpoint, which imports in float32) is rounded, with a warning naming it.
Otherwise conversion is reshapes and transposes only: HF -> r1jax -> HF is bitwise exact.

Neither direction imports transformers or torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import pathlib
from collections import defaultdict
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from r1jax.model.config import ModelConfig
from r1jax.model.decoder import Policy
from r1jax.errors import UserError
from r1jax.files import writing
from r1jax.model.factory import abstract_policy
from r1jax.model.hf_checkpoint import INDEX_FILE, HFCheckpoint, config_path, read_json
from r1jax.model.hf_config import (defaulted_sizes, from_hf_config, generation_config, mtp_layers, stored_dtype,
                                   to_hf_config)
from r1jax.model.hf_weights import Tensor, tensor_map
from r1jax.sharding.params import path_keys, state_shardings
from r1jax.sharding.rules import Rules

log = logging.getLogger(__name__)
SHARD_LIMIT = 5 * 10**9  # transformers' default max_shard_size ("5GB")
_CODES = {"float32": "F32", "bfloat16": "BF16"}
_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
# safetensors dtypes that a parameter of each dtype holds exactly (float16 widens to float32 exactly)
_HOLDS_EXACTLY = {"float32": ("F32", "BF16", "F16"), "bfloat16": ("BF16",)}
# stored in float32 whatever the export dtype: transformers (>= 5.24) loads and saves DeepSeek-V3's router so;
# r1jax's parameters are float32 too (model.moe.router_config, RoutingBias)
_FP32_TENSORS = {"deepseek_v3": ("mlp.gate.weight", "mlp.gate.e_score_correction_bias"), "qwen3_moe": ()}


def parameter_leaves(tree: Mapping) -> dict[tuple, Any]:
    """{path: leaf} of a pure parameter dict, paths as in `hf_weights` (str and int keys)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {path_keys(path): leaf for path, leaf in flat}


# ---------------------------------------------------------------------------------------------- export


@dataclasses.dataclass(frozen=True)
class _Entry:
    tensor: Tensor
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _DTYPES[self.dtype].itemsize


def _plan(cfg: ModelConfig, params: Mapping, dtype: str, max_shard_bytes: int) -> list[list[_Entry]]:
    """HF tensors in order, cut into shards of at most `max_shard_bytes` (a larger tensor is alone)."""
    leaves = parameter_leaves(params)
    shards: list[list[_Entry]] = [[]]
    size = 0
    keep_fp32 = _FP32_TENSORS[cfg.family]
    for t in tensor_map(cfg):
        stacked = leaves[t.path]
        entry_dtype = "float32" if keep_fp32 and t.hf_name.endswith(keep_fp32) else dtype
        entry = _Entry(t, t.hf_shape(stacked.shape[len(t.index):]), entry_dtype)
        if shards[-1] and size + entry.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += entry.nbytes
    return shards


def _header(entries: Sequence[_Entry]) -> bytes:
    """A safetensors header: 8-byte little-endian length, then JSON padded with spaces to 8 bytes."""
    meta: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for e in entries:
        meta[e.tensor.hf_name] = {"dtype": _CODES[e.dtype], "shape": list(e.shape),
                                  "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    text = json.dumps(meta, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def _axes(entry) -> tuple[str, ...]:
    return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


@functools.lru_cache(maxsize=None)
def _gather_fn(sharding, ndim: int, n_index: int, dtype: str):
    """jit(x, idx) -> x[idx] cast to `dtype`, replicated on every device (see the module docstring)."""
    out_dtype = _DTYPES[dtype]
    if not isinstance(sharding, NamedSharding) or sharding.mesh.size == 1:
        return jax.jit(lambda x, idx: x[tuple(idx[i] for i in range(n_index))].astype(out_dtype))
    spec = tuple(sharding.spec) + (None,) * (ndim - len(sharding.spec))

    def local(x, idx):
        hit, starts = jnp.bool_(True), []
        for d in range(n_index):
            axes = _axes(spec[d])
            offset = jax.lax.axis_index(axes) * x.shape[d] if axes else 0
            hit &= (idx[d] >= offset) & (idx[d] < offset + x.shape[d])
            starts.append(jnp.clip(idx[d] - offset, 0, x.shape[d] - 1))
        y = x[tuple(starts)].astype(out_dtype)
        owners = tuple(a for d in range(n_index) for a in _axes(spec[d]))
        if owners:  # exactly one device along these axes holds the slot: sum its bits with zeros (exact)
            bits = jax.lax.bitcast_convert_type(y, jnp.dtype(f"uint{8 * out_dtype.itemsize}"))
            total = jax.lax.psum(jnp.where(hit, bits.astype(jnp.uint32), 0), owners)
            y = jax.lax.bitcast_convert_type(total.astype(bits.dtype), out_dtype)
        for d in range(n_index, ndim):
            if _axes(spec[d]):
                y = jax.lax.all_gather(y, _axes(spec[d]), axis=d - n_index, tiled=True)
        return y

    return jax.jit(jax.shard_map(local, mesh=sharding.mesh, in_specs=(PartitionSpec(*spec), PartitionSpec()),
                                 out_specs=PartitionSpec(), check_vma=False))


def host_slot(x: jax.Array, index: tuple[int, ...], dtype: str) -> np.ndarray:
    """`x[index]` in `dtype` as a host array on every process (a collective when `x` is sharded)."""
    fn = _gather_fn(x.sharding, x.ndim, len(index), dtype)
    out = fn(x, np.asarray(index, np.int32).reshape(len(index)))
    return np.asarray(out.addressable_data(0))


def shard_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def export_hf(policy: Policy, out_dir: str | pathlib.Path, dtype: str | None = None,
              max_shard_bytes: int = SHARD_LIMIT, token_ids: Mapping[str, int | None] | None = None,
              ) -> list[pathlib.Path]:
    """Write `policy` as a Hugging Face checkpoint; returns the files written (on process 0).

    `dtype` defaults to the parameter dtype; `token_ids` may give bos_token_id / eos_token_id /
    pad_token_id for the configs. Every process must call this (the gathers are collectives).
    """
    cfg = policy.cfg
    dtype = dtype or cfg.param_dtype
    if dtype not in _DTYPES:
        raise UserError(f"export dtype {dtype!r}: expected one of {', '.join(_DTYPES)}")
    out = pathlib.Path(out_dir)
    writer = jax.process_index() == 0
    if writer:
        out.mkdir(parents=True, exist_ok=True)
    params = nnx.to_pure_dict(nnx.state(policy))
    leaves = parameter_leaves(params)
    shards = _plan(cfg, params, dtype, max_shard_bytes)
    names = shard_names(len(shards))
    for name, entries in zip(names, shards):
        with writing(out / name), (open(out / name, "wb") if writer else contextlib.nullcontext()) as f:
            if writer:
                f.write(_header(entries))
            for e in entries:
                slot = host_slot(leaves[e.tensor.path], e.tensor.index, e.dtype)
                if writer:
                    f.write(e.tensor.to_hf(slot).tobytes())
    if not writer:
        return []
    files = [out / n for n in names]
    if len(shards) > 1:
        weight_map = {e.tensor.hf_name: n for n, entries in zip(names, shards) for e in entries}
        total = sum(e.nbytes for entries in shards for e in entries)
        _write_json(out / INDEX_FILE, {"metadata": {"total_size": total}, "weight_map": weight_map})
        files.append(out / INDEX_FILE)
    ids = dict(token_ids or {})
    _write_json(out / "config.json", to_hf_config(cfg, dtype, **ids))
    _write_json(out / "generation_config.json", generation_config(**ids))
    return files + [out / "config.json", out / "generation_config.json"]


def _write_json(path: pathlib.Path, data: Any) -> None:
    with writing(path):  # a full disk names the file
        path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


# ---------------------------------------------------------------------------------------------- import


def _ignored(name: str, cfg: ModelConfig, mtp: int) -> bool:
    """Tensors transformers also skips: rotary caches, a tied lm_head, multi-token-prediction layers."""
    if name.endswith("rotary_emb.inv_freq") or (cfg.tie_word_embeddings and name == "lm_head.weight"):
        return True
    parts = name.split(".")
    return bool(mtp and name.startswith("model.layers.") and int(parts[2]) >= cfg.num_hidden_layers)


def _listing(what: str, names: Sequence[str], limit: int = 20) -> str:
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return f"{what} ({len(names)}): {', '.join(names[:limit])}{more}"


FLOATS = ("F64", "F32", "F16", "BF16")  # safetensors dtype codes a weight may be stored in (fp8: `dtype` says F32)


def check_tensors(ckpt: HFCheckpoint, cfg: ModelConfig, shapes: Mapping) -> None:
    """UserError listing missing, unexpected and wrongly shaped tensors (headers only; no data read)."""
    leaves = parameter_leaves(shapes)
    expected = {t.hf_name: t.hf_shape(leaves[t.path].shape[len(t.index):]) for t in tensor_map(cfg)}
    mtp = mtp_layers(ckpt.config)
    present = set(ckpt.files)
    missing = sorted(set(expected) - present)
    # transformers builds DeepSeek's shared experts even when there are none, zero wide, and saves them empty
    empty = {n for n in present if ".mlp.shared_experts." in n and 0 in ckpt.shape(n) or ckpt.is_fp8_scale(n)}
    unexpected = sorted(n for n in present - set(expected) - empty if not _ignored(n, cfg, mtp))
    wrong = sorted(f"{n} {list(ckpt.shape(n))} (expected {list(s)})" for n, s in expected.items()
                   if n in present and ckpt.shape(n) != s)
    # integers and booleans are no weights (an int8 embedding imported as its codes, with a warning)
    not_float = sorted(f"{n} ({ckpt.dtype(n)})" for n in expected if n in present and ckpt.dtype(n) not in FLOATS)
    problems = [_listing(w, names) for w, names in (("missing tensors", missing),
                                                      ("unexpected tensors", unexpected),
                                                      ("tensors of the wrong shape", wrong),
                                                      ("tensors not stored as floats", not_float)) if names]
    if problems:
        defaulted = defaulted_sizes(ckpt.config, cfg.family) if missing or unexpected or wrong else []
        lacks = f"config.json does not state {', '.join(defaulted.values())}; " if defaulted else ""
        raise UserError(f"HF checkpoint {str(ckpt.dir)!r} does not match its config.json: {lacks}"
                        + "; ".join(problems))


def rounded_tensors(ckpt: HFCheckpoint, cfg: ModelConfig, shapes: Mapping) -> list[str]:
    """The HF tensors stored in a dtype their parameter cannot hold exactly (headers only): import rounds them."""
    leaves = parameter_leaves(shapes)
    return [t.hf_name for t in tensor_map(cfg)
            if ckpt.dtype(t.hf_name) not in _HOLDS_EXACTLY[np.dtype(leaves[t.path].dtype).name]]


def _warn_rounded(ckpt: HFCheckpoint, cfg: ModelConfig, shapes: Mapping) -> None:
    """Warn of tensors that import rounds, unless the user asked for it (param_dtype bfloat16 over a float32
    checkpoint). transformers rounds them too when it loads the checkpoint in its config's dtype, so it is no
    error; but an export then differs from the source, which param_dtype float32 would have kept exactly."""
    rounded = rounded_tensors(ckpt, cfg, shapes)
    stored = stored_dtype(ckpt.config, str(ckpt.dir / "config.json"))
    if rounded and not (cfg.param_dtype == "bfloat16" and stored == "float32"):
        advice = ("import with model.param_dtype=float32 to keep them exact" if cfg.param_dtype != "float32"
                  else "r1jax keeps no float64 parameters")
        log.warning("HF checkpoint %s: %s; %s", ckpt.dir,
                    _listing(f"tensors stored wider than param_dtype {cfg.param_dtype} are rounded to it", rounded),
                    advice)


def _block(tensors: Sequence[Tensor], shape: tuple[int, ...], dtype, slices: tuple[slice, ...],
           ckpt: HFCheckpoint) -> np.ndarray:
    """The part `slices` of one stacked parameter, read from the HF tensors that intersect it."""
    out = np.empty(tuple(s.stop - s.start for s in slices), dtype)
    for t in tensors:
        lead = slices[: len(t.index)]
        if not all(s.start <= i < s.stop for i, s in zip(t.index, lead)):
            continue
        value = t.from_hf(ckpt.get(t.hf_name), shape[len(t.index):])[slices[len(t.index):]]
        out[tuple(i - s.start for i, s in zip(t.index, lead))] = value.astype(dtype)
    return out


def _normalise(index: tuple, shape: tuple[int, ...]) -> tuple[slice, ...]:
    index = tuple(index) + (slice(None),) * (len(shape) - len(index))
    return tuple(slice(*s.indices(n)[:2]) for s, n in zip(index, shape))


def _place(tensors: Sequence[Tensor], abstract, sharding, ckpt: HFCheckpoint) -> jax.Array:
    shape, dtype = tuple(abstract.shape), abstract.dtype
    if sharding is None:
        return jnp.asarray(_block(tensors, shape, dtype, _normalise((), shape), ckpt))
    by_slices: dict[tuple, list] = defaultdict(list)
    for device, index in sharding.addressable_devices_indices_map(shape).items():
        slices = _normalise(index, shape)
        by_slices[tuple((s.start, s.stop) for s in slices)].append((device, slices))
    arrays = []
    for group in by_slices.values():
        block = _block(tensors, shape, dtype, group[0][1], ckpt)
        arrays += [jax.device_put(block, device) for device, _ in group]
    return jax.make_array_from_single_device_arrays(shape, sharding, arrays)


def import_params(ckpt: HFCheckpoint, cfg: ModelConfig, mesh: Mesh | None = None,
                  rules: Rules | None = None) -> Policy:
    """A Policy of architecture `cfg` filled from `ckpt`, placed in the mesh's shards when given one."""
    graphdef, abstract_state = nnx.split(abstract_policy(cfg))
    shapes = nnx.to_pure_dict(abstract_state)
    check_tensors(ckpt, cfg, shapes)
    _warn_rounded(ckpt, cfg, shapes)
    by_path: dict[tuple, list[Tensor]] = defaultdict(list)
    for t in tensor_map(cfg):
        by_path[t.path].append(t)
    shardings = None
    if mesh is not None:
        shardings = parameter_leaves(nnx.to_pure_dict(state_shardings(abstract_state, mesh, rules or Rules.preset(
            "fsdp_expert_tensor"))))
    leaves = parameter_leaves(shapes)
    uncovered = sorted(str(p) for p in leaves if p not in by_path)
    assert not uncovered, f"parameters without an HF tensor: {uncovered}"  # a tensor_map bug, not input
    values = {p: _place(by_path[p], a, shardings and shardings[p], ckpt) for p, a in leaves.items()}
    _check_finite(ckpt, by_path, values)
    nnx.replace_by_pure_dict(abstract_state, _unflatten(values))
    return nnx.merge(graphdef, abstract_state)


@jax.jit
def _all_finite(arrays: list) -> list:
    """Whether each array holds only finite values (one program for them all, compiled once per model)."""
    return [jnp.isfinite(x).all() for x in arrays]


def _check_finite(ckpt: HFCheckpoint, by_path: Mapping[tuple, Sequence[Tensor]], values: Mapping) -> None:
    """UserError naming the HF tensors holding a NaN or an infinity (a damaged download, a bad conversion): they
    were imported without a word, every logit then NaN. Checked where the arrays lie, in one program; the
    tensors of a parameter that fails (an expert of a stacked one) are then looked at one by one."""
    paths = list(values)
    finite = jax.device_get(_all_finite([values[p] for p in paths]))
    bad = sorted(t.hf_name for p, ok in zip(paths, finite) if not ok for t in by_path[p]
                 if not bool(jnp.isfinite(values[p][t.index]).all()))
    if bad:
        raise UserError(f"HF checkpoint {str(ckpt.dir)!r} holds NaN or infinite values: "
                        f"{_listing('tensors', bad)}")


def _unflatten(flat: Mapping[tuple, Any]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def read_hf_config(hf_dir: str | pathlib.Path) -> tuple[ModelConfig, list[str]]:
    """(ModelConfig, notes) from `hf_dir/config.json`; UserError naming unsupported settings."""
    path = config_path(hf_dir)
    return from_hf_config(read_json(path), source=str(path))


