"""Everything about a run that can be checked before its first step, checked before it.

`preflight(config, tokenizer, mesh, rules)` is a function of its arguments and the files they name. It raises
UserError naming the culprit (the config field, the stage, the file and row) when:

- the mesh does not fit the devices, a model's dimensions do not divide over the mesh axes they are split
  over, or a batch does not split over the data-parallel devices (or the processes of the run), or the rows
  of a stage that updates (GRPO, SFT, distill) do not split into `update.micro_batches`;
- the tokenizer has more pieces than some stage's model vocabulary;
- a stage's data cannot be read: a data file (`data.path`, a stage's `data_path` or `teacher`) that is
  missing, unreadable or malformed, whose rows lack prompt/answer (and `solution` for the SFT data of sft and
  distill stages) under the `data.fields` mapping, whose answers do not fit `data.answer_format` (a GSM8K
  answer without `####`, a MATH solution without `\\boxed`), hold an unknown task, are too few for one
  batch, or whose prompts do not fit the largest prompt bucket when the stage samples from them, or whose
  rows (prompt + solution + eos) do not fit the largest SFT sequence bucket when it trains on them;
- a rejection_sampling stage whose samples an sft or distill stage trains on samples longer sequences (the
  largest of `sampling.prompt_buckets` + its `max_new_tokens` + eos) than the largest SFT sequence bucket
  (the reading stage's `max_sequence_length`: rl.train.sft.sequence_buckets; the stage drops a sample that
  does not fit, reason `sft_length`);
- a stage names data that no earlier rejection_sampling stage writes, or `init_from` names a path that is not
  a readable r1jax or Hugging Face checkpoint, or one whose architecture differs from the stage's model, or
  one that carries a tokenizer that is not the run's (a Hugging Face directory's tokenizer files, an r1jax
  checkpoint's saved tokenizer: rl.train.policy_io, the run has one tokenizer);
- a stage's data holds code rows (task `code`) but `rewards.names` has no `code` reward, or the code sandbox
  does not work on this host in `rewards.code.sandbox`'s mode (rl.rewards.sandbox.check_sandbox);
- the held-out evaluation set cannot be built (its task space is too small) or its prompts are too long;
- a prompt cannot be rendered in the run's prompt format (`template: chat` with a tokenizer that has no chat
  template, or a chat template that fails on the prompt, or `template_vars` beside r1jax's own tokenizer, whose
  chat text reads none): the held-out prompts are always rendered.

It returns the held-out problems it built, so the trainer need not build them twice. `check_resumed_data`
checks what a resume adds: the stage resumed inside reads the rows its checkpoint's position counts.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Sequence

from flax import nnx
from jax.sharding import Mesh

from r1jax.errors import UserError
from r1jax.model.factory import abstract_policy
from r1jax.model.tokenizer import TokenizerLike, check_template_vars, render_prompt
from r1jax.rl.checkpoint import load_config
from r1jax.rl.config import Config, stage_config
from r1jax.rl.config_checks import context_overflow
from r1jax.rl.data import DataConfig, build_source
from r1jax.rl.data.pipeline import check_same_source, read_source
from r1jax.rl.evaluate import held_out_problems, missing_judges
from r1jax.rl.hf_architecture import hf_model, is_hf_dir
from r1jax.rl.rewards.functions import check_names
from r1jax.rl.rewards.sandbox import check_sandbox
from r1jax.rl.sampler_devices import split_devices
from r1jax.rl.train.checkpointing import check_compatible
from r1jax.rl.train.config import StageConfig
from r1jax.rl.train.policy_io import init_from_tokenizer
from r1jax.rl.train.sft import check_sft_lengths, sequence_buckets
from r1jax.rl.train.run_layout import dataset_path
from r1jax.rl.train.stage_rejection import is_kept_dataset, readers
from r1jax.sharding.mesh import check_batch_rows
from r1jax.sharding.params import abstract_sharded
from r1jax.sharding.rules import Rules

# the stage kinds that train on `solution` rows (SFT on worked solutions)
SFT_KINDS = ("sft", "distill")


def preflight(config: Config, tokenizer: TokenizerLike, mesh: Mesh, rules: Rules, first_stage: int = 0,
              left_out: list[str] | None = None) -> list[dict]:
    """Check `config` against the tokenizer, mesh and files (module docstring); the held-out problems (the
    kinds of problem training used up, which they lack, appended to `left_out`: rl.evaluate.held_out_problems).
    A resumed run passes the first stage it still runs: finished stages' `init_from` sources may be gone."""
    check_names(config.rewards, config.reward_pool.import_modules)  # the held-out judges' advice repeated a typo
    config.data.check_listed_once()
    check_mesh(config, mesh)
    for index in range(len(config.stages)):
        check_model(config, index, tokenizer, mesh, rules)
    check_batches(config, mesh, rules)
    check_sample_lengths(config)
    for index in range(len(config.stages)):
        check_stage_data(config, index, tokenizer)
        if index >= first_stage:
            config.stages[index].check_settings_read()
            config.stages[index].check_paths()
            check_init_from(config, index, tokenizer)
    return check_held_out(config, tokenizer, left_out)


def check_mesh(config: Config, mesh: Mesh) -> None:
    """The config's mesh fits this run's trainer devices (all but `sampling.devices`) and is the mesh the
    run was given."""
    devices = len(split_devices(config.sampling)[0])
    shape = config.sharding.shape_for(devices)
    if tuple(mesh.shape.values()) != tuple(shape):
        raise UserError(f"sharding: the mesh {dict(mesh.shape)} is not the config's {shape} over "
                        f"{devices} devices")


def check_model(config: Config, index: int, tokenizer: TokenizerLike, mesh: Mesh, rules: Rules) -> None:
    """Stage `index`'s model holds the tokenizer's pieces and its parameters split over the mesh."""
    stage = config.stages[index]
    model = stage_config(config, index).model
    if tokenizer.vocab_size > model.vocab_size:
        raise UserError(_vocab_too_small(config, stage, model, tokenizer))
    if index == 0 or model != stage_config(config, index - 1).model:
        try:
            abstract_sharded(nnx.state(abstract_policy(model)), mesh, rules)
        except UserError as err:  # it names the parameter and the mesh axes; add whose model it is
            devices = config.sampling.devices
            trainer = (f" (the trainer's {mesh.size} devices: all but sampling.devices={devices}; another "
                       f"sampling.devices may split them better)" if devices else "")
            raise UserError(f"the model of stage {stage.name} does not fit the mesh {dict(mesh.shape)}{trainer}: "
                            f"{err}") from None


def _vocab_too_small(config: Config, stage: StageConfig, model, tokenizer: TokenizerLike) -> str:
    """Stage `stage`'s model has fewer embedding rows than the tokenizer has pieces: where each comes from and
    what to change (a Hugging Face checkpoint's vocab_size is its weights', not the config's to raise)."""
    first = config.stages[0].init_from if config.stages else None
    source = (f"tokenizer.path={config.tokenizer.path!r}" if config.tokenizer.path else
              f"the tokenizer of stages[{config.stages[0].name}].init_from={first!r}" if first else
              f"the tokenizer trained on the run's data (tokenizer.vocab_size={config.tokenizer.vocab_size})")
    pieces = f"the {tokenizer.vocab_size} pieces of {source} (stage {stage.name})"
    hf_dir = next((s.init_from for s in config.stages if s.init_from and is_hf_dir(s.init_from)), None)
    if model != config.model:  # a distilled student's: the config's own
        return f"stages[{stage.name}] student model.vocab_size={model.vocab_size} is smaller than {pieces}; raise it"
    if hf_dir is None:
        return f"model.vocab_size={model.vocab_size} is smaller than {pieces}; raise it"
    return (f"{pathlib.Path(hf_dir) / 'config.json'}'s vocab_size={model.vocab_size} (the checkpoint's embedding "
            f"rows) is smaller than {pieces}: this is not the tokenizer the checkpoint was trained with; set "
            f"tokenizer.path to the directory of the tokenizer it was trained with (its tokenizer.json), or start "
            f"from a checkpoint whose embedding holds this tokenizer")


def check_batches(config: Config, mesh: Mesh, rules: Rules) -> None:
    """The rows each stage places on the mesh split over the data-parallel devices and, in a stage that
    updates, into `update.micro_batches` (rl.update.micro_split; with grpo.pack, the packing plan's micro-batches
    x devices: rl.grpo.packing). Any batch suits any number of processes: each does the host work of the whole
    batch."""
    g = config.grpo
    for stage in config.stages:
        if stage.kind == "grpo":
            rows, rows_what = g.prompts_per_step * g.group_size, (
                f"a GRPO batch (grpo.prompts_per_step x grpo.group_size = {g.prompts_per_step} x {g.group_size})")
        else:
            rows, rows_what = stage.batch_size, f"stages[{stage.name}].batch_size"
        if stage.kind == "grpo" or stage.kind in SFT_KINDS:
            axes = check_batch_rows(rows, mesh, rules, rows_what)
            packed = stage.kind == "grpo" and g.pack
            check_micro_batches(config.update.micro_batches, rows, f"{rows_what} (stage {stage.name})",
                                math.prod(mesh.shape[a] for a in axes) if packed else 1)


def check_sample_lengths(config: Config) -> None:
    """A rejection_sampling stage whose samples sft/distill stages train on samples sequences that fit their
    largest SFT bucket (the shortest `max_sequence_length` of them): the largest prompt bucket + the stage's
    max_new_tokens + eos (SFT adds one; a sample longer than the bucket would be dropped, all of a
    long-thinking policy's best ones among them)."""
    bucket = config.sampling.prompt_buckets[-1]
    for stage in config.stages:
        found = readers(config.stages, stage.name) if stage.kind == "rejection_sampling" else []
        if not found:
            continue
        reader = min(found, key=lambda r: r.max_sequence_length)
        limit = reader.max_sequence_length
        budget = stage.new_tokens(config.sampling.max_new_tokens)
        field = (f"stages[{stage.name}].max_new_tokens={budget}" if stage.max_new_tokens else
                 f"sampling.max_new_tokens={budget} (stages[{stage.name}].max_new_tokens unset)")
        if bucket + budget + 1 > limit:
            most = limit - bucket - 1
            fix = f"set stages[{stage.name}].max_new_tokens to at most {most} or lower " if most >= 1 else "lower "
            raise UserError(f"{field}: the largest of sampling.prompt_buckets ({bucket}) + {budget} new tokens + "
                            f"eos = {bucket + budget + 1} tokens, longer than the largest SFT sequence bucket "
                            f"({limit}: stages[{reader.name}].max_sequence_length) in which stage {reader.name} "
                            f"trains on stage {stage.name}'s samples; {fix}the largest of sampling.prompt_buckets "
                            f"(the longest prompt sampled), or raise stages[{reader.name}].max_sequence_length")


def check_micro_batches(micro_batches: int, rows: int, what: str, devices: int = 1) -> None:
    """`rows` split into `update.micro_batches` (rl.update.micro_split), on each of `devices` data-parallel
    devices when the rows are packed (rl.grpo.packing.plan_packing)."""
    split = micro_batches * devices
    if rows % split:
        into = f"{micro_batches} micro-batches" + (f" x {devices} data-parallel devices (grpo.pack)" if devices > 1
                                                   else "")
        raise UserError(f"update.micro_batches={micro_batches}: {what} of {rows} rows does not split into {into}; "
                        f"make the rows a multiple of {split}")


def stage_data(config: Config, stage: StageConfig) -> DataConfig | None:
    """The data config a stage's iterator reads, or None when it reads an earlier stage's samples."""
    stage_names = {s.name for s in config.stages}
    if stage.kind == "distill":
        source = stage.teacher
    elif stage.kind == "grpo":
        source = None
    else:
        source = stage.data_path
    if source in stage_names:
        if stage.kind == "rejection_sampling":
            raise UserError(f"stages[{stage.name}].data_path={source!r}: a rejection_sampling stage samples "
                            f"prompts from a data file, not from another stage's samples")
        return None
    if stage.kind != "grpo" and is_kept_dataset(source):  # another run's samples: r1jax's own field names
        return config.data.for_own_file(source)
    return dataclasses.replace(config.data, path=source or config.data.path)


def check_resumed_data(config: Config, run_dir: pathlib.Path, index: int, data_state: dict,
                       checkpoint: str) -> None:
    """Stage `index`, resumed inside from `checkpoint` (whose data-iterator state is `data_state`), reads the
    rows it read then in the same order (rl.data.pipeline.check_same_source): checked before the trainer
    writes to the run directory, so a refused resume leaves it as it was."""
    stage = config.stages[index]
    data = stage_data(config, stage)
    if data is None:  # an earlier rejection_sampling stage's samples, in this run's directory
        name = stage.teacher if stage.kind == "distill" else stage.data_path
        data = config.data.for_own_file(str(dataset_path(run_dir, name)))
    check_same_source(data_state, read_source(data)[1], checkpoint=checkpoint, stage=stage.name)


def other_training_files(config: Config) -> list[tuple[str, DataConfig]]:
    """(the config field naming it, its data config) of each file the run's stages train on besides
    data.path (an SFT stage's data_path, a distill stage's teacher, a rejection_sampling stage's prompts),
    each once; an earlier stage's samples are not among them (their prompts are the run's own)."""
    files, seen = [], {config.data.path}
    for stage in config.stages:
        data = stage_data(config, stage)
        if data is not None and data.path not in seen:
            seen.add(data.path)
            files.append((_field(stage), data))
    return files


def _field(stage: StageConfig) -> str:
    """The config field that names a stage's data file."""
    if stage.kind == "distill":
        return f"stages[{stage.name}].teacher"
    if stage.kind != "grpo" and stage.data_path:
        return f"stages[{stage.name}].data_path"
    return "data.path"


def check_stage_data(config: Config, index: int, tokenizer: TokenizerLike) -> None:
    """Stage `index`'s rows exist, hold the fields it needs, fill one batch and fit: the largest prompt bucket
    when it samples from their prompts, the largest SFT sequence bucket when it trains on them (sft, distill:
    every row of a file, the first problem of each generated task; an earlier stage's samples are checked when
    the stage starts, rl.train.stage_sft.check_samples)."""
    stage = config.stages[index]
    data = stage_data(config, stage)
    if data is None:
        return
    if stage.kind == "grpo":
        batch, batch_field = config.grpo.prompts_per_step, "grpo.prompts_per_step"
    else:
        batch, batch_field = stage.batch_size, f"stages[{stage.name}].batch_size"
    needs_solution = stage.kind in SFT_KINDS
    if data.path is None:  # generated tasks: one problem of each shows they generate (and solve)
        source = build_source(data)
        problems = [source[i] for i in range(min(len(source), len(data.tasks)))]
        size, what = len(source), f"data.tasks {list(data.tasks)} (data.num_problems={data.num_problems})"
    else:
        field = f"{_field(stage)}={data.path!r}"
        if not pathlib.Path(data.path).exists():
            raise UserError(f"{field}: no such file (stage {stage.name})")
        try:
            problems = data.load_file(need_solution=needs_solution)
        except UserError as err:
            raise UserError(f"{field} (stage {stage.name}): {err}") from None
        size, what = len(problems), field
    check_code_rows(config, problems, what)
    if size < batch:
        raise UserError(f"{batch_field}={batch}: {what} holds only {size} problem{'' if size == 1 else 's'}, fewer "
                        f"than one batch (stage {stage.name})")
    if needs_solution:
        unsolved = [p for p in problems if not p["solution"]]
        if unsolved:
            raise UserError(f"stage {stage.name}: task {unsolved[0]['task']!r} gives no worked solutions to "
                            f"train on; give the stage a data_path")
        # every row of a file; of generated tasks the first of each (their worked solutions are short)
        check_sft_lengths(tokenizer, config.tokenizer.template, problems, config.tokenizer.template_vars,
                          f"{what} (stage {stage.name})", path=data.path,
                          buckets=sequence_buckets(stage.max_sequence_length))
    else:
        context = stage_config(config, index).model.max_position_embeddings
        budget = stage.new_tokens(config.sampling.max_new_tokens)
        check_prompt_lengths(config, tokenizer, [p["prompt"] for p in problems], what,
                             [(context, budget, f"stage {stage.name}'s model")])


def check_code_rows(config: Config, problems: Sequence[dict], what: str) -> None:
    """Code rows need the `code` reward (nothing else scores them) and a sandbox that works here."""
    if not any(p["task"] == "code" for p in problems):
        return
    if "code" not in config.rewards.names:  # (the hint keeps the run's rewards: the held-out set may need them)
        names, weights = [*config.rewards.names, "code"], [*config.rewards.weights, 1.0]
        raise UserError(f"{what} holds code problems but rewards.names={list(config.rewards.names)} has no "
                        f"'code' reward to score them (accuracy scores them 0): add it, e.g. "
                        f"rewards.names=[{','.join(names)}] rewards.weights=[{','.join(map(str, weights))}]")
    check_sandbox(config.rewards.code.sandbox)


def check_prompt_lengths(config: Config, tokenizer: TokenizerLike, prompts: Sequence[str], what: str,
                         contexts: Sequence[tuple[int, int, str]] = ()) -> None:
    """Every prompt, rendered in the run's prompt format as sampling renders it, fits the largest of
    sampling.prompt_buckets, and with its token budget each model's context in `contexts` ((context, budget,
    which model); the rule: rl.config_checks.context_overflow): a run sampled past it, and `r1jax eval` /
    `generate` then refused its checkpoint at the same lengths."""
    if not prompts:
        return
    template, template_vars = config.tokenizer.template, config.tokenizer.template_vars
    try:
        check_template_vars(tokenizer, template, template_vars)
        lengths = [len(render_prompt(tokenizer, template, p, template_vars)) for p in prompts]
    except UserError as err:  # no chat template, or one that fails to render: it names the file
        raise UserError(f"tokenizer.template={template!r} ({what}): {err}") from None
    longest = max(range(len(prompts)), key=lengths.__getitem__)
    limit = config.sampling.prompt_buckets[-1]
    if lengths[longest] > limit:
        raise UserError(f"{what}: the prompt {prompts[longest][:60]!r} is {lengths[longest]} tokens with the "
                        f"template, longer than the largest of sampling.prompt_buckets ({limit}); raise it")
    for context, budget, model in contexts:
        overflow = context_overflow(lengths[longest], budget, context)
        if overflow == "prompt":  # no budget fits: "lower the token budget" named the wrong knob
            raise UserError(f"{what}: the prompt {prompts[longest][:60]!r} is {lengths[longest]} tokens with the "
                            f"template: it fills {model}'s context of {context} tokens (model.max_position_embeddings)"
                            " by itself, leaving no room for a new token: shorten it or raise the context")
        if overflow == "budget":
            raise UserError(f"{what}: the prompt {prompts[longest][:60]!r} is {lengths[longest]} tokens with the "
                            f"template; with {budget} new tokens it passes {model}'s context of {context} tokens "
                            f"(model.max_position_embeddings): lower the token budget or raise the context")


def check_init_from(config: Config, index: int, tokenizer: TokenizerLike) -> None:
    """A stage's `init_from` is a readable r1jax or Hugging Face checkpoint of the stage's architecture; the
    tokenizer it carries, if any (rl.train.policy_io.init_from_tokenizer), is the run's (`tokenizer`) unless
    tokenizer.path chose the run's."""
    stage = config.stages[index]
    if not stage.init_from:
        return
    path = pathlib.Path(stage.init_from)
    where = f"stages[{stage.name}].init_from={stage.init_from!r}"
    if not path.exists():
        raise UserError(f"{where}: no such checkpoint")
    try:
        carried = init_from_tokenizer(stage.init_from) if config.tokenizer.path is None else None
        if carried is not None and carried != tokenizer:
            use = (f"tokenizer.path={stage.init_from!r}" if is_hf_dir(path) else
                   "tokenizer.path to the checkpoint's tokenizer directory (a run saves it in checkpoints/tokenizer)")
            raise UserError(f"the checkpoint's tokenizer is not the run's (a run has one tokenizer: tokenizer.path, "
                            f"else the first stage's init_from checkpoint's, else trained); set {use} to use it "
                            f"(a run that trained its own before r1jax read an r1jax checkpoint's, resumed: "
                            f"tokenizer.path=RUN_DIR/tokenizer keeps it)")
        if is_hf_dir(path):  # its architecture; any param_dtype (the weights are converted on import)
            hf_model(stage_config(config, index).model, path)
            return
        saved = load_config(path)
    except UserError as err:
        raise UserError(f"{where}: {err}") from None
    check_compatible(saved, stage_config(config, index), where)


def check_held_out(config: Config, tokenizer: TokenizerLike, left_out: list[str] | None = None) -> list[dict]:
    """The held-out evaluation problems, after checking they can be built and their prompts fit."""
    try:
        problems = held_out_problems(config.data, config.eval, left_out=left_out,
                                     other_files=other_training_files(config))
    except ValueError as err:  # the task space is too small for eval.num_problems
        raise UserError(f"eval: {err}") from None
    contexts = [(stage_config(config, i).model.max_position_embeddings, config.sampling.max_new_tokens,
                 f"stage {stage.name}'s model") for i, stage in enumerate(config.stages)]  # each evaluates its own
    check_prompt_lengths(config, tokenizer, [p["prompt"] for p in problems], "the held-out eval set", contexts)
    missing = missing_judges(config.rewards, sorted({p["task"] for p in problems}))
    if missing:  # the run's reward pool scores its evaluations: a reward it lacks would read 0
        names, weights = [*config.rewards.names, *missing], [*config.rewards.weights, *[0.0] * len(missing)]
        raise UserError(f"the held-out evaluation reads the {' and '.join(missing)} reward(s), which "
                        f"rewards.names={list(config.rewards.names)} does not score (its pass@1 / format_rate "
                        f"would read 0); add them with weight 0 to leave training as it is: "
                        f"rewards.names=[{','.join(names)}] rewards.weights=[{','.join(map(str, weights))}]")
    return problems
