"""Export an r1jax checkpoint as a Hugging Face checkpoint (DeepseekV3ForCausalLM / Qwen3MoeForCausalLM).

Writes config.json, generation_config.json and safetensors in the canonical hub layout (per-expert tensors),
sharded with model.safetensors.index.json above --max-shard-size, and the tokenizer the checkpoint carries
(or --tokenizer) beside them, with its bos / eos / pad ids in the configs:
- a Hugging Face tokenizer (a model that came from the hub) is written back byte for byte: its
  tokenizer.json, tokenizer_config.json (its own chat template), special_tokens_map.json, chat_template.jinja
  and generation_config.json (which replaces the model export's, so its eos_token_id list is kept); with
  --template r1_zero or none (a policy trained on that prompt format, e.g. R1-Zero from a base model) its chat
  template is replaced by one that renders that format (model.hf_tokenizer.save_with_prompt_format);
- an r1jax sentencepiece tokenizer becomes the files AutoTokenizer loads, with a chat template that renders
  the prompt format the checkpoint was trained with (its tokenizer.template; --template chooses another), so
  `apply_chat_template([user turn], add_generation_prompt=True)` gives the ids r1jax prompted it with
  (known gaps, such as a literal "<s>" in the text, and how to get r1jax's ids then: model.hf_tokenizer);
  the sentencepiece model goes beside them as tokenizer.model, which import-hf carries and export-gguf writes
  as llama.cpp's SPM tokenizer (a hub copy of the model needs no run directory for its GGUF).
Tensors stream one at a time from the (possibly sharded, multi-host) checkpoint; process 0 writes.
sharding.KEY=VALUE overrides adapt the mesh to the devices at hand.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import shutil
import sys

from r1jax.files import remove, staging_path
from r1jax.model.tokenizer import TEMPLATE_NAMES
from r1jax.rl.cli.common import new_output_dir, refuse_inside_checkpoint, sigterm_interrupts
from r1jax.sharding.topology import parse_size


INTERMIXED = True  # KEY=VALUE overrides after the options too (rl.cli.main.parse_arguments)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a run directory, checkpoint directory or step directory")
    parser.add_argument("out", help="directory to write the HF checkpoint into (must be empty or absent)")
    parser.add_argument("overrides", nargs="*", default=[], metavar="sharding.KEY=VALUE",
                        help="mesh overrides for loading, e.g. sharding.fsdp=-1")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default=None,
                        help="weight dtype in the files (default: the checkpoint's param_dtype)")
    parser.add_argument("--max-shard-size", default="5GB",
                        help="largest safetensors file, e.g. 5GB (10**9 bytes, as Hugging Face), 4GiB "
                             "(2**32), 500MB or a byte count (default 5GB)")
    parser.add_argument("--tokenizer", default=None, metavar="PATH",
                        help="a tokenizer directory (Hugging Face tokenizer.json or r1jax tokenizer.model) to "
                             "export beside the weights (default: the one the checkpoint carries)")
    parser.add_argument("--template", choices=TEMPLATE_NAMES, default=None,
                        help="the prompt format the exported chat template renders (default: the checkpoint's "
                             "tokenizer.template, the format it was trained with); a Hugging Face tokenizer keeps "
                             "its own chat template unless this says r1_zero or none")


def run(args: argparse.Namespace) -> int:
    import jax

    from r1jax.errors import UserError
    from r1jax.model.hf_io import export_hf
    from r1jax.model.hf_tokenizer import save_hf_tokenizer, save_with_prompt_format, token_ids
    from r1jax.model.tokenizer import Tokenizer
    from r1jax.rl.checkpoint import read_latest

    bad = [o for o in args.overrides if not o.startswith("sharding.")]
    if bad:
        raise UserError(f"override {bad[0]!r}: export-hf only takes sharding.KEY=VALUE overrides")
    max_bytes = parse_size(args.max_shard_size, "--max-shard-size")
    if max_bytes <= 0:
        raise UserError(f"--max-shard-size {args.max_shard_size!r}: must be at least one byte")
    out = new_output_dir(args.out)
    refuse_inside_checkpoint(out, args.checkpoint, f"output directory {str(out)!r}")
    with sigterm_interrupts():
        config, tok, policy = read_latest(args.checkpoint, lambda step: load_checkpoint(step, args))
    if tok is None and args.template is not None:  # (was dropped: the model alone written, "no tokenizer")
        raise UserError(f"--template {args.template}: the checkpoint carries no tokenizer to write a chat template "
                        f"for; pass --tokenizer DIR, or drop --template")
    own_format = tok is not None and isinstance(tok, Tokenizer)  # r1jax's: the chat template is written here
    template = args.template or config.tokenizer.template
    # a Hugging Face tokenizer's own chat template is replaced only when --template asks for r1jax's format
    replaced = tok is not None and not own_format and args.template not in (None, "chat")
    with sigterm_interrupts(), staged_directory(out) as staged:  # OUT appears whole, or not at all
        files = export_hf(policy, staged, args.dtype, max_bytes, token_ids(tok) if tok else None)
        if tok is not None and jax.process_index() == 0:
            if own_format:
                save_hf_tokenizer(tok, staged, template, config.model.max_position_embeddings)
            elif replaced:  # after the model export, as below
                save_with_prompt_format(tok, staged, template)
            else:  # after the model export: the tokenizer's own generation_config.json replaces the one it wrote
                tok.save(staged)
    weights = [f for f in files if f.suffix == ".safetensors"]
    print(f"wrote {out} ({config.model.family}, {len(weights)} safetensors file(s), "
          f"dtype {args.dtype or config.model.param_dtype}, "
          f"{_tokenizer_note(tok, own_format, replaced, template)})")
    return 0


@contextlib.contextmanager
def staged_directory(out: pathlib.Path):
    """Where to write the export to `out` (a new path, or an empty directory: new_output_dir), so that a stop
    (an error, Ctrl-C, SIGTERM under sigterm_interrupts) leaves nothing: an export written straight into `out`
    left a truncated model.safetensors there, which the same command then refused to overwrite. A new path: a
    directory beside it, renamed to it at the end. An empty directory (maybe a symlink, `.`, a mount point, none
    of which can be renamed over): `out` itself, emptied again on a stop. Process 0 only: the others write
    nothing."""
    import jax

    if jax.process_index() != 0:
        yield out
        return
    if out.exists():
        try:
            yield out
        except BaseException:
            for child in out.iterdir():
                remove(child)
            raise
        return
    staged = staging_path(out, "partial")
    staged.mkdir(parents=True)
    try:
        yield staged
        os.replace(staged, out)
    except OSError as err:  # a full disk names the file as the user knows it, not its hidden, removed stage
        named = os.fsdecode(err.filename) if isinstance(err.filename, (str, bytes, os.PathLike)) else None
        if err.errno is None or named is None or not pathlib.Path(named).is_relative_to(staged):
            raise
        raise OSError(err.errno, err.strerror, str(out / pathlib.Path(named).relative_to(staged))) from err
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def load_checkpoint(step, args: argparse.Namespace, before_weights=None):
    """(config with the sharding overrides, tokenizer or None, policy) of checkpoint step `step` for an export;
    `before_weights(config, tokenizer)` checks what it can before the weights load."""
    from r1jax.rl.checkpoint import inference_mesh, load_config, load_policy
    from r1jax.rl.config import config_from_dicts, to_dict
    from r1jax.rl.config_overrides import parse_overrides

    config = config_from_dicts(to_dict(load_config(step)), parse_overrides(args.overrides), source="overrides")
    tok = resolve_tokenizer(args.tokenizer, config.model.vocab_size, step)
    if before_weights is not None:
        before_weights(config, tok)
    _, policy = load_policy(step, inference_mesh(config.sharding, config.model), config.sharding.logical_rules())
    return config, tok, policy


def _tokenizer_note(tok, own_format: bool, replaced: bool, template: str) -> str:
    if tok is None:
        return "no tokenizer: pass --tokenizer to include one"
    if own_format:
        return f"with the tokenizer; its chat template renders the {template} prompt format"
    if replaced:
        return (f"with the Hugging Face tokenizer's files, its chat template replaced by one that renders the "
                f"{template} prompt format")
    if template != "chat":
        return (f"with the Hugging Face tokenizer's files as they came; note: the checkpoint's config prompts "
                f"with the {template} format (tokenizer.template; an imported checkpoint has the default), not "
                f"this chat template: prompt it with that text, or export with --template {template} for a chat "
                "template that renders it")
    return "with the Hugging Face tokenizer's files as they came"


def resolve_tokenizer(path: str | None, vocab_size: int, checkpoint: str):
    """`path`'s tokenizer (UserError when it does not fit `vocab_size`), else the one `checkpoint` carries or None."""
    from r1jax.errors import UserError
    from r1jax.model.tokenizer import load_tokenizer
    from r1jax.rl.checkpoint import find_tokenizer

    if path is None:  # the tokenizer a checkpoint carries, if any
        return find_tokenizer(checkpoint, vocab_size)
    tok = load_tokenizer(path)
    if tok.vocab_size > vocab_size:
        raise UserError(f"--tokenizer {path}: {tok.vocab_size} pieces do not fit the model's vocab_size "
                        f"{vocab_size}")
    own = find_tokenizer(checkpoint)  # (for the note only: --tokenizer replaces it, whatever its size)
    if own is not None and own != tok:  # (another model's that fits the vocabulary shipped silently)
        print(f"r1jax export-hf: note: --tokenizer {path} is not the tokenizer {checkpoint} carries (the one it "
              "trained with): the export ships it, and the model's ids are read by its pieces", file=sys.stderr)
    return tok
