"""Convert a local Hugging Face checkpoint (DeepSeek-V3 or Qwen3-MoE safetensors) into an r1jax checkpoint.

Tensors are read lazily and placed directly in their shards on the mesh of the config's sharding section
(override it with sharding.KEY=VALUE, as for `r1jax init`). Unsupported settings or missing/unexpected
tensors are errors that list them. The directory's tokenizer files (tokenizer.json, tokenizer_config.json,
special_tokens_map.json, generation_config.json, chat_template.jinja, and a tokenizer.model beside them; or an
r1jax tokenizer.model alone), when it has them, are copied byte for byte into OUT/tokenizer/, where `r1jax
generate / eval / export-hf / export-gguf` find them (tokenizer.json is the tokenizer when both are there).
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib

from r1jax.files import remove
from r1jax.rl.cli.common import new_output_dir, sigterm_interrupts


INTERMIXED = True  # KEY=VALUE overrides after the options too (rl.cli.main.parse_arguments)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("hf_dir", help="a local HF checkpoint directory (config.json + *.safetensors)")
    parser.add_argument("out", help="checkpoint directory to create (must not hold a checkpoint yet)")
    parser.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="dotted config overrides, e.g. sharding.expert=2 model.param_dtype=bfloat16")


def run(args: argparse.Namespace) -> int:
    import jax

    from r1jax.errors import UserError
    from r1jax.model.hf_io import HFCheckpoint, import_params
    from r1jax.model.tokenizer import is_tokenizer_dir, load_tokenizer
    from r1jax.rl.checkpoint import save_policy
    from r1jax.rl.hf_policy import hf_run_config
    from r1jax.sharding.mesh import build_mesh

    config, notes = hf_run_config(args.hf_dir, args.overrides)
    for note in notes:
        print(f"note: {note}")
    out = new_output_dir(args.out)
    # loaded before the weights, so a broken tokenizer file fails fast, naming it
    tokenizer = load_tokenizer(args.hf_dir) if is_tokenizer_dir(args.hf_dir) else None
    if tokenizer is not None and tokenizer.vocab_size > config.model.vocab_size:
        raise UserError(f"{args.hf_dir}: the tokenizer's {tokenizer.vocab_size} tokens do not fit the model's "
                        f"vocab_size {config.model.vocab_size}")
    mesh = build_mesh(config.sharding)
    rules = config.sharding.logical_rules()
    with HFCheckpoint(args.hf_dir) as ckpt:
        policy = import_params(ckpt, config.model, mesh, rules)
    made = not out.exists()
    with sigterm_interrupts():  # a stop leaves no partial step (save_policy) nor a step without its tokenizer
        step_dir = save_policy(out, config, policy)
        if tokenizer is not None and jax.process_index() == 0:
            try:
                tokenizer.save(out / "tokenizer")
            except BaseException:  # a full disk, a stop: OUT as it was (absent, or empty: new_output_dir), or a
                for path in [out] if made else list(out.iterdir()):  # rerun is refused
                    with contextlib.suppress(OSError):  # the disk's error is the one to report
                        remove(path)
                raise
    partial = [name for name in ("tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")
               if (pathlib.Path(args.hf_dir) / name).is_file()]
    missing = (f"no tokenizer.json there (beside its {', '.join(partial)}): no tokenizer copied, generate needs --ids"
               if partial else "no tokenizer files there: generate needs --ids")
    print(f"wrote {step_dir} ({config.model.family}, {config.model.num_hidden_layers} layers, from {args.hf_dir}; "
          f"{'with its tokenizer' if tokenizer is not None else missing})")
    return 0
