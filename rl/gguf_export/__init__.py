"""Export a policy as one GGUF file that llama.cpp runs: Qwen3-MoE as `qwen3moe`, DeepSeek-V3 as `deepseek2`.

Written with `gguf`, the reader/writer llama.cpp maintains. The file holds the architecture metadata
(`metadata`), the tokenizer (`vocab`) and the tensors in llama.cpp's layout (`layout`). Tensors stream one
at a time, as `export-hf`'s do: every tensor's name, shape and type is known before any data is read, so
the header is written first and each tensor is gathered from the (possibly sharded, multi-host)
parameters, converted and appended; host memory stays near the largest GGUF tensor (a layer's stacked
experts). Process 0 writes; every process takes part in the gathers.

The file appears only when complete: it is written to a temporary file in the output's directory and
renamed over the output at the end; on any failure the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import os
import pathlib

import gguf
import jax
import numpy as np
from flax import nnx

from r1jax.errors import UserError
from r1jax.files import staging_path, writing
from r1jax.model.config import ModelConfig
from r1jax.model.decoder import Policy
from r1jax.model.hf_io import parameter_leaves
from r1jax.model.tokenizer import TokenizerLike
from r1jax.rl.gguf_export.layout import ARCHS, QTYPES, plan, tensor_data
from r1jax.rl.gguf_export.metadata import unsupported, write_architecture
from r1jax.rl.gguf_export.vocab import write_tokenizer

DTYPES = tuple(QTYPES)  # f32 f16 bf16 q8_0


def check_exportable(policy_cfg: ModelConfig, dtype: str) -> None:
    """UserError naming an unsupported dtype or what llama.cpp cannot run in this model."""
    if dtype not in DTYPES:
        raise UserError(f"GGUF dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    problems = unsupported(policy_cfg)
    if problems:
        arch = gguf.MODEL_ARCH_NAMES[ARCHS[policy_cfg.family]]
        raise UserError(f"this {policy_cfg.family} model cannot run in llama.cpp as {arch}: " + "; ".join(problems))


def export_gguf(policy: Policy, out: str | pathlib.Path, tokenizer: TokenizerLike, dtype: str = "f32",
                template: str = "chat", force: bool = False, name: str | None = None) -> pathlib.Path | None:
    """Write `policy` with `tokenizer` as the GGUF file `out`; returns its path on process 0, else None.

    `template` is the prompt format an r1jax tokenizer's chat template renders; `force` replaces an existing
    file. Every process must call this (the gathers are collectives).
    """
    cfg = policy.cfg
    check_exportable(cfg, dtype)
    out = pathlib.Path(out)
    if out.is_dir():
        raise UserError(f"output {str(out)!r} is a directory; give a file name such as model.gguf")
    if out.exists() and not force:
        raise UserError(f"output {str(out)!r} exists; pass --force to replace it")
    if not out.parent.is_dir():
        raise UserError(f"output directory {str(out.parent)!r} " + ("is a file, not a directory" if
                                                                    out.parent.exists() else "does not exist"))
    writes = jax.process_index() == 0
    if not writes:  # the tokenizer's refusals, on every process before the gathers (process 0 writes it below)
        write_tokenizer(gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[ARCHS[cfg.family]]), tokenizer, cfg.vocab_size,
                        template)
    leaves = parameter_leaves(nnx.to_pure_dict(nnx.state(policy)))
    entries = plan(cfg, {path: tuple(leaf.shape) for path, leaf in leaves.items()}, dtype)
    tmp = staging_path(out, "partial") if writes else None
    writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[ARCHS[cfg.family]]) if writes else None
    with writing(out, *([tmp] if tmp else [])):  # a full disk names OUT, not its hidden staging file
        try:
            if writer is not None:
                writer.add_name(name or out.stem)
                write_architecture(writer, cfg, dtype)
                write_tokenizer(writer, tokenizer, cfg.vocab_size, template)
                for e in entries:
                    # a float dtype with raw_dtype: the writer takes e.shape as the element shape for every type
                    writer.add_tensor_info(e.name, e.shape, np.dtype(np.float32), e.nbytes, e.qtype)
                writer.write_header_to_file()
                writer.write_kv_data_to_file()
                writer.write_ti_data_to_file()
            for e in entries:
                data = tensor_data(e, leaves)
                if writer is not None:
                    writer.write_tensor_data(data.view(_FileWrite))
            if writer is not None:
                writer.close()
                os.replace(tmp, out)
        except BaseException:
            if writer is not None:
                with contextlib.suppress(Exception):
                    writer.close()
                tmp.unlink(missing_ok=True)
            raise
    return out if writes else None


class _FileWrite(np.ndarray):
    """An array the GGUF writer writes through the file object (it calls `tofile`): numpy's own `tofile` on a
    full disk raises an OSError without errno ("2048 requested and 632 written"), which reads as a bug (a
    traceback) where the file's `write` raises ENOSPC, the disk's refusal, named (r1jax.files.writing)."""

    def tofile(self, fid, sep="", format="%s"):
        fid.write(np.ascontiguousarray(self.view(np.ndarray)).reshape(-1).view(np.uint8).data)  # any dtype, size

