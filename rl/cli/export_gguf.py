"""Export an r1jax checkpoint as one GGUF file for llama.cpp (Qwen3-MoE as qwen3moe, DeepSeek-V3 as deepseek2).

The file holds the weights in llama.cpp's layout (experts stacked per layer; DeepSeek-V3's MLA with kv_b split
per head into attn_k_b / attn_v_b), every architecture and routing field written explicitly (sigmoid gating,
group-limited routing, the routing bias and scaling factor for DeepSeek-V3), and the tokenizer: the
checkpoint's (or --tokenizer's) sentencepiece model as llama.cpp's SPM tokenizer (also one imported from
export-hf's files, which carry it as tokenizer.model), or its Hugging Face tokenizer.json as a byte-level BPE
with a pre-tokenizer llama.cpp knows (qwen2, deepseek-v3), with the special token ids and the chat template (for
an r1jax tokenizer: the prompt format the checkpoint was trained with).
--dtype: f32 (exact), f16, bf16 or q8_0; norms, the router and biases stay f32 as llama.cpp's converter keeps
them. Tensors stream one at a time; the file appears only when complete. sharding.KEY=VALUE overrides adapt
the mesh to the devices at hand.
"""

from __future__ import annotations

import argparse

DTYPE_CHOICES = ("f32", "f16", "bf16", "q8_0")  # as r1jax.rl.gguf_export.DTYPES (kept import-free for --help)


INTERMIXED = True  # KEY=VALUE overrides after the options too (rl.cli.main.parse_arguments)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a run directory, checkpoint directory or step directory")
    parser.add_argument("out", help="the GGUF file to write, e.g. model.gguf")
    parser.add_argument("overrides", nargs="*", default=[], metavar="sharding.KEY=VALUE",
                        help="mesh overrides for loading, e.g. sharding.fsdp=-1")
    parser.add_argument("--dtype", default="f32", metavar="{" + ",".join(DTYPE_CHOICES) + "}",
                        help="weight type in the file (default f32: exact)")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--tokenizer", default=None, metavar="PATH",
                        help="a tokenizer directory (Hugging Face tokenizer.json or r1jax tokenizer.model) to put "
                             "in the file (default: the one the checkpoint carries)")


def run(args: argparse.Namespace) -> int:
    import pathlib

    from r1jax.errors import UserError
    from r1jax.rl.checkpoint import read_latest
    from r1jax.rl.cli.common import check_creatable, refuse_dangling_link, refuse_inside_checkpoint, \
        sigterm_interrupts
    from r1jax.rl.cli.export_hf import load_checkpoint
    from r1jax.rl.gguf_export import check_exportable, export_gguf

    if args.dtype not in DTYPE_CHOICES:
        raise UserError(f"--dtype {args.dtype!r}: expected one of {', '.join(DTYPE_CHOICES)}")
    bad = [o for o in args.overrides if not o.startswith("sharding.")]
    if bad:
        raise UserError(f"override {bad[0]!r}: export-gguf only takes sharding.KEY=VALUE overrides")
    out = pathlib.Path(args.out)
    # (it was replaced by the file, the link gone)
    refuse_dangling_link(out, f"output {str(out)!r}", "give a new file name, or remove the link")
    if out.is_dir():  # (before the --force advice: --force cannot replace a directory)
        raise UserError(f"output {str(out)!r} is a directory; give a file name such as {str(out / 'model.gguf')!r}")
    if out.exists() and not out.is_file():  # --force renames over it: /dev/full became a 774 KB file
        raise UserError(f"output {str(out)!r} exists and is not a regular file; give a file name")
    if out.exists() and not args.force:
        raise UserError(f"output {str(out)!r} exists; pass --force to replace it")
    if out.parent.exists():  # a directory, writable, before the weights load (the file is written beside it first)
        check_creatable(out.parent, f"output {str(out)!r}", out)
    refuse_inside_checkpoint(out, args.checkpoint, f"output {str(out)!r}")

    def before_weights(config, tok):
        check_exportable(config.model, args.dtype)
        if tok is None:
            raise UserError(f"checkpoint {args.checkpoint!r} carries no tokenizer, and llama.cpp needs one in the "
                            "file: pass --tokenizer")

    with sigterm_interrupts():  # a stop (Ctrl-C, SIGTERM) leaves no partial file beside OUT (export_gguf)
        config, tok, policy = read_latest(args.checkpoint, lambda step: load_checkpoint(step, args, before_weights))
        written = export_gguf(policy, out, tok, args.dtype, config.tokenizer.template, args.force)
    if written is not None:
        print(f"wrote {written} ({config.model.family} as llama.cpp's "
              f"{'deepseek2' if config.model.is_deepseek else 'qwen3moe'}, dtype {args.dtype}, "
              f"{written.stat().st_size} bytes)")
    return 0
