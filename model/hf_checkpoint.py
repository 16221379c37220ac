"""A local Hugging Face checkpoint directory opened for lazy reading (safetensors' `safe_open`).

`HFCheckpoint` gives the directory's config.json, a tensor name -> shard file map, and each tensor's header
(shape, dtype) or data on demand. The shard files are the index's (`model.safetensors.index.json`), else
`model.safetensors` as transformers loads it, else every `*.safetensors` file. A file that cannot be read
(config.json or the index not a JSON object, an index without `weight_map`, a shard it lists that is missing,
a truncated or damaged shard, a tensor in two files) is a UserError naming it, never a raw traceback.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
from typing import Any

import numpy as np

from r1jax.errors import UserError

INDEX_FILE = "model.safetensors.index.json"


class HFCheckpoint:
    """A local HF checkpoint directory opened for lazy reading: its config and a name -> file map (module
    docstring); close it, or use it as a context manager."""

    def __init__(self, hf_dir: str | pathlib.Path):
        self.dir = pathlib.Path(hf_dir)
        config_path = self.dir / "config.json"
        if not config_path.is_file():
            raise UserError(f"HF checkpoint {str(self.dir)!r}: no config.json")
        self.config = read_json(config_path)
        self._stack = contextlib.ExitStack()
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

    def dtype(self, name: str) -> str:
        """The tensor's safetensors dtype code ("F32", "BF16", ...), from the header."""
        return self._handles[self.files[name]].get_slice(name).get_dtype()

    def get(self, name: str) -> np.ndarray:
        return self._handles[self.files[name]].get_tensor(name)

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
