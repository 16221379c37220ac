"""A local Hugging Face checkpoint directory opened for lazy reading (safetensors' `safe_open`).

`HFCheckpoint` gives the directory's config.json, a tensor name -> shard file map, and each tensor's header
(shape, dtype) or data on demand. The shard files are the index's (`model.safetensors.index.json`), else
`model.safetensors` as transformers loads it, else every `*.safetensors` file. A file that cannot be read
(config.json or the index not a JSON object, an index without `weight_map`, a shard it lists that is missing,
a truncated or damaged shard, a tensor in two files) is a UserError naming it, never a raw traceback.

Block-wise fp8 checkpoints (DeepSeek-V3/R1 as released, Qwen3's -FP8 models: `quantization_config` with
quant_method "fp8", fmt "e4m3", `weight_block_size` [b0, b1]): a `F8_E4M3` weight W [out, in] comes with
`W_scale_inv` [ceil(out / b0), ceil(in / b1)] (float32), and its value is W x the scale of its block, as
DeepSeek's `fp8_cast_bf16.py` and transformers' fine-grained fp8 dequantisation compute it. `get` returns such
a weight dequantised, in float32 (`dtype` says "F32"), and the scale tensors are not parameters
(`is_fp8_scale`). safetensors' numpy reader has no fp8 type, so those weights are read from the file's bytes
(its header's offsets) as ml_dtypes' float8_e4m3fn.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
from typing import Any

import ml_dtypes
import numpy as np

from r1jax.errors import UserError

INDEX_FILE = "model.safetensors.index.json"
FP8_SCALE_SUFFIX = "_scale_inv"
FP8_FORMATS = {"e4m3": "F8_E4M3"}  # quantization_config fmt -> the safetensors dtype of its weights


def config_path(hf_dir: str | pathlib.Path) -> pathlib.Path:
    """`hf_dir/config.json`; UserError when `hf_dir` is missing, a file, or holds no config.json."""
    hf_dir = pathlib.Path(hf_dir)
    if not hf_dir.is_dir():
        raise UserError(f"HF checkpoint {str(hf_dir)!r}: " + ("is a file, not a checkpoint directory"
                                                              if hf_dir.exists() else "does not exist"))
    config = hf_dir / "config.json"
    if not config.is_file():  # (one that is a directory or a broken link was "no config.json" too)
        what = "is a directory, not a file" if config.is_dir() else \
            f"is a symlink to {os.readlink(config)!r}, which does not exist" if config.is_symlink() else None
        raise UserError(f"HF checkpoint {str(hf_dir)!r}: " + (f"config.json {what}" if what else "no config.json"))
    return config


class HFCheckpoint:
    """A local HF checkpoint directory opened for lazy reading: its config and a name -> file map (module
    docstring); close it, or use it as a context manager."""

    def __init__(self, hf_dir: str | pathlib.Path):
        self.dir = pathlib.Path(hf_dir)
        self.config = read_json(config_path(self.dir))
        self._stack = contextlib.ExitStack()
        self._headers: dict[pathlib.Path, tuple[int, dict]] = {}  # a shard's header, for `_raw`
        try:
            self._handles = {file: self._open(file) for file in self._files()}
            self.files = self._names()
        except BaseException:
            self.close()
            raise

    def _open(self, file: pathlib.Path):
        from safetensors import SafetensorError, safe_open

        try:
            return self._stack.enter_context(safe_open(str(file), framework="numpy"))
        except SafetensorError as err:  # what safetensors raises for a short file or a bad header
            raise UserError(f"{file}: not a complete safetensors file ({err})") from err
        except OSError as err:  # a directory named like a shard, a broken link, an unreadable file
            what = "a directory" if file.is_dir() else "a broken link" if file.is_symlink() and not file.exists() \
                else err.strerror or str(err)
            raise UserError(f"{file}: not a readable safetensors file ({what})") from err

    def _names(self) -> dict[str, pathlib.Path]:
        files: dict[str, pathlib.Path] = {}
        for file, handle in self._handles.items():
            for name in handle.keys():
                if name in files:  # which copy transformers would load is not for us to guess
                    raise UserError(f"HF checkpoint {str(self.dir)!r}: tensor {name!r} is in both "
                                    f"{files[name].name} and {file.name}; keep one copy")
                files[name] = file
        return files

    def _files(self) -> list[pathlib.Path]:
        """The index's shard files; without an index model.safetensors, as transformers loads it, else every
        *.safetensors file."""
        index = self.dir / INDEX_FILE
        if index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
                raise UserError(f"{index}: no 'weight_map' object mapping tensor names to shard file names")
            files = sorted({self.dir / f for f in weight_map.values()})
            missing = [str(f.name) for f in files if not f.is_file()]
            if missing:
                raise UserError(f"{index}: lists shard files that do not exist: {', '.join(missing)}")
            return files
        if (self.dir / "model.safetensors").is_file():
            return [self.dir / "model.safetensors"]
        files = sorted(self.dir.glob("*.safetensors"))
        if not files:
            raise UserError(f"HF checkpoint {str(self.dir)!r}: no *.safetensors files (convert .bin first)")
        return files

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handles[self.files[name]].get_slice(name).get_shape())

    def _stored_dtype(self, name: str) -> str:
        return self._handles[self.files[name]].get_slice(name).get_dtype()

    def dtype(self, name: str) -> str:
        """The tensor's safetensors dtype code ("F32", "BF16", ...), from the header; "F32" for a block-wise
        fp8 weight (`get` dequantises it)."""
        stored = self._stored_dtype(name)
        return "F32" if stored in FP8_FORMATS.values() else stored

    def get(self, name: str) -> np.ndarray:
        if self._stored_dtype(name) not in FP8_FORMATS.values():
            return self._handles[self.files[name]].get_tensor(name)
        return self._dequantised(name)

    def is_fp8_scale(self, name: str) -> bool:
        """`name` is the block scales of a fp8 weight (read with it, no parameter of its own)."""
        weight = name[: -len(FP8_SCALE_SUFFIX)]
        return name.endswith(FP8_SCALE_SUFFIX) and weight in self.files and self._stored_dtype(weight) in \
            FP8_FORMATS.values()

    def _dequantised(self, name: str) -> np.ndarray:
        """A block-wise fp8 weight times its blocks' scales, float32 (module docstring)."""
        quant = self.config.get("quantization_config") or {}
        block = quant.get("weight_block_size")
        fmt = quant.get("fmt", "e4m3")
        where = f"HF checkpoint {str(self.dir)!r}: tensor {name!r}"
        if quant.get("quant_method") != "fp8" or FP8_FORMATS.get(fmt) != self._stored_dtype(name):
            raise UserError(f"{where} is {self._stored_dtype(name)}, but config.json's quantization_config "
                            f"({quant or 'none'}) does not describe block-wise fp8 e4m3 weights")
        if not (isinstance(block, list) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block)):
            raise UserError(f"{where}: quantization_config.weight_block_size is {block!r} (expected [rows, columns])")
        scale_name = name + FP8_SCALE_SUFFIX
        if scale_name not in self.files:
            raise UserError(f"{where} is fp8 without its block scales {scale_name!r}")
        weight = self._raw(name, ml_dtypes.float8_e4m3fn)
        scale = np.asarray(self._handles[self.files[scale_name]].get_tensor(scale_name), np.float32)
        blocks = tuple(-(-n // b) for n, b in zip(weight.shape, block))
        if weight.ndim != 2 or scale.shape != blocks:
            raise UserError(f"{where}: {list(weight.shape)} weight with {list(scale.shape)} scales {scale_name!r} "
                            f"(expected {list(blocks)} for blocks of {block})")
        per_element = np.repeat(np.repeat(scale, block[0], axis=0), block[1], axis=1)
        per_element = per_element[: weight.shape[0], : weight.shape[1]]
        return weight.astype(np.float32) * per_element

    def _raw(self, name: str, dtype) -> np.ndarray:
        """Tensor `name` read from its file's bytes as `dtype` (a type safetensors' numpy reader lacks)."""
        file = self.files[name]
        if file not in self._headers:  # read once per shard (DeepSeek-V3's hold ~600 fp8 weights each)
            with file.open("rb") as f:
                size = int.from_bytes(f.read(8), "little")
                self._headers[file] = size, json.loads(f.read(size))
        size, header = self._headers[file]
        begin, end = header[name]["data_offsets"]
        shape = tuple(header[name]["shape"])
        data = np.memmap(file, dtype=np.uint8, mode="r", offset=8 + size + begin, shape=(end - begin,))
        return np.asarray(data).view(dtype).reshape(shape)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> "HFCheckpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_json(path: pathlib.Path) -> dict[str, Any]:
    """The JSON object in `path`; UserError naming the file when it is not one."""
    try:
        data = json.loads(path.read_text())
    except ValueError as err:  # JSONDecodeError, or bytes that are not UTF-8
        raise UserError(f"{path}: not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object ({{...}}), found a {type(data).__name__}")
    return data
