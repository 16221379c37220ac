"""Export an r1jax checkpoint as a Hugging Face checkpoint (DeepseekV3ForCausalLM / Qwen3MoeForCausalLM).

Writes config.json, generation_config.json and safetensors in the canonical hub layout (per-expert tensors),
sharded with model.safetensors.index.json above --max-shard-size, and with --tokenizer the tokenizer files
AutoTokenizer loads (chat template from --template). Tensors stream one at a time from the (possibly
sharded, multi-host) checkpoint; process 0 writes. sharding.KEY=VALUE overrides adapt the mesh to the
devices at hand.
"""

from __future__ import annotations

import argparse
import pathlib

from r1jax.sharding.topology import parse_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a run directory, checkpoint directory or step directory")
    parser.add_argument("out", help="directory to write the HF checkpoint into (must be empty or absent)")
    parser.add_argument("overrides", nargs="*", metavar="sharding.KEY=VALUE",
                        help="mesh overrides for loading, e.g. sharding.fsdp=-1")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default=None,
                        help="weight dtype in the files (default: the checkpoint's param_dtype)")
    parser.add_argument("--max-shard-size", default="5GB",
                        help="largest safetensors file, e.g. 5GB (10**9 bytes, as Hugging Face), 4GiB "
                             "(2**32), 500MB or a byte count (default 5GB)")
    parser.add_argument("--tokenizer", default=None, metavar="PATH",
                        help="the r1jax tokenizer (tokenizer.model or its directory) to export beside the "
                             "weights (default: the one the checkpoint carries); its bos/eos/pad ids go "
                             "into the configs")
    parser.add_argument("--template", default="r1_zero",
                        help="prompt template that becomes the chat template (r1_zero or chat)")


def run(args: argparse.Namespace) -> int:
    import jax

    from r1jax.errors import UserError
    from r1jax.model.hf_io import export_hf
    from r1jax.model.hf_tokenizer import chat_template, save_hf_tokenizer, token_ids
    from r1jax.rl.checkpoint import load_config, load_policy
    from r1jax.rl.config import config_from_dicts, parse_overrides, to_dict
    from r1jax.sharding.mesh import build_mesh

    bad = [o for o in args.overrides if not o.startswith("sharding.")]
    if bad:
        raise UserError(f"override {bad[0]!r}: export-hf only takes sharding.KEY=VALUE overrides")
    max_bytes = parse_size(args.max_shard_size, "--max-shard-size")
    if max_bytes <= 0:
        raise UserError(f"--max-shard-size {args.max_shard_size!r}: must be at least one byte")
    out = pathlib.Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"output directory {str(out)!r} exists and is not empty; refusing to overwrite")
    config = load_config(args.checkpoint)
    config = config_from_dicts(to_dict(config), parse_overrides(args.overrides), source="overrides")
    tok = _tokenizer(args.tokenizer, config.model.vocab_size, args.checkpoint)
    chat_template(args.template)  # validates the name before the long part
    mesh = build_mesh(config.sharding)
    _, policy = load_policy(args.checkpoint, mesh, config.sharding.logical_rules())
    files = export_hf(policy, out, args.dtype, max_bytes, token_ids(tok) if tok else None)
    weights = [f for f in files if f.suffix == ".safetensors"]
    if tok is not None and jax.process_index() == 0:
        save_hf_tokenizer(tok, out, args.template, config.model.max_position_embeddings)
    print(f"wrote {out} ({config.model.family}, {len(weights)} safetensors file(s), "
          f"dtype {args.dtype or config.model.param_dtype}, "
          f"{'with the tokenizer' if tok else 'no tokenizer: pass --tokenizer to include one'})")
    return 0


def _tokenizer(path: str | None, vocab_size: int, checkpoint: str):
    from r1jax.errors import UserError
    from r1jax.model.tokenizer import Tokenizer
    from r1jax.rl.checkpoint import find_tokenizer

    if path is None:  # the tokenizer a trainer checkpoint carries, if any
        return find_tokenizer(checkpoint)
    tok = Tokenizer.load(path)
    if tok.vocab_size > vocab_size:
        raise UserError(f"--tokenizer {path}: {tok.vocab_size} pieces do not fit the model's vocab_size "
                        f"{vocab_size}")
    return tok
