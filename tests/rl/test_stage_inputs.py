"""What a stage starts from and trains on, checked before it trains: the tokenizer an r1jax checkpoint carries
(a run's `checkpoints/tokenizer`) is the run's when the first stage starts there, and a later stage's that
differs is refused; SFT rows longer than the largest SFT sequence bucket are named before training (a data
file in preflight, an earlier stage's samples when the stage starts), and in a batch by SFT's own bound."""

import json
import types

import jax
import pytest
from rich.text import Text

from r1jax.errors import UserError
from r1jax.model.tokenizer import load_tokenizer, train_tokenizer
from r1jax.rl.cli.main import main
from r1jax.rl.config import load_config
from r1jax.rl.data import build_tokenizer
from r1jax.rl.rewards.functions import ScoreItem
from r1jax.rl.rewards.pool import ScoreResult
from r1jax.rl.train.context import StageStart
from r1jax.rl.train.policy_io import run_tokenizer
from r1jax.rl.train.preflight import preflight
from r1jax.rl.train import stage_rejection, stage_sft
from r1jax.rl.train.sft import SEQUENCE_BUCKETS, check_sft_lengths
from r1jax.rl.train.stage_sft import run_distill, run_sft, sft_batch
from r1jax.sharding.mesh import build_mesh

from tests.model.hf_tokenizer_files import write_hf_tokenizer
from tests.rl.conftest import TRAIN_CONFIG

SOLUTION = "<think> 2+2=4 </think> <answer> 4 </answer>"
LONG_SOLUTION = "<think> " + "1 + 1 = 2. " * 1200 + "</think> <answer>2</answer>"  # > 4096 tokens


@pytest.fixture(scope="module")
def tokenizer():
    config = load_config(TRAIN_CONFIG)
    return build_tokenizer(config.tokenizer, config.data)  # what the test run trains: 512 pieces


def run_checkpoint(run_dir, tokenizer=None):
    """A run directory's checkpoint `checkpoints/0` of the test run's model, with `tokenizer` saved where a
    run saves its own (rl.train.policy_io.RunCheckpoints.save: checkpoints/tokenizer); returns the step."""
    assert main(["init", str(TRAIN_CONFIG), str(run_dir / "checkpoints")]) == 0
    if tokenizer is not None:
        tokenizer.save(run_dir / "checkpoints" / "tokenizer")
    return run_dir / "checkpoints" / "0"


def check(tokenizer, *overrides):
    config = load_config(TRAIN_CONFIG, list(overrides))
    return preflight(config, tokenizer, build_mesh(config.sharding), config.sharding.logical_rules())


def fails(tokenizer, *overrides, named):
    with pytest.raises(UserError) as info:
        check(tokenizer, *overrides)
    message = str(info.value)
    for fragment in named:
        assert fragment in message, message
    assert "\n" not in message
    return message


def test_a_first_stage_from_an_r1jax_checkpoint_keeps_its_saved_tokenizer(tokenizer, tmp_path, capsys):
    """Its embeddings were trained on that tokenizer's ids: a run that starts there on other data used to
    train a new tokenizer (the same text encoded to other ids) and fine-tune the policy on those."""
    step = run_checkpoint(tmp_path / "run", tokenizer)
    other_data = load_config(TRAIN_CONFIG, ["data.tasks=[countdown]", f"stages.0.init_from={step}"])
    assert build_tokenizer(other_data.tokenizer, other_data.data) != tokenizer  # what it trained before
    assert run_tokenizer(other_data) == tokenizer == load_tokenizer(tmp_path / "run" / "checkpoints" / "tokenizer")
    # the run directory (its latest checkpoint) and the checkpoint root name the same one
    for init_from in (tmp_path / "run", tmp_path / "run" / "checkpoints"):
        assert run_tokenizer(load_config(TRAIN_CONFIG, [f"stages.0.init_from={init_from}"])) == tokenizer
    # tokenizer.path still chooses; a checkpoint that carries none leaves the tokenizer trained on the data
    sentencepiece = train_tokenizer(["plain text for a tiny tokenizer"] * 20, 300)
    sentencepiece.save(tmp_path / "sp")
    chosen = load_config(TRAIN_CONFIG, [f"tokenizer.path={tmp_path / 'sp'}", f"stages.0.init_from={step}"])
    assert run_tokenizer(chosen) == sentencepiece
    bare = load_config(TRAIN_CONFIG, [f"stages.0.init_from={run_checkpoint(tmp_path / 'bare')}"])
    assert run_tokenizer(bare) == tokenizer == build_tokenizer(bare.tokenizer, bare.data)
    with pytest.raises(UserError, match=r"stages\[sft\]\.init_from=.*does not exist"):
        run_tokenizer(load_config(TRAIN_CONFIG, [f"stages.0.init_from={tmp_path / 'nothing'}"]))
    capsys.readouterr()


def test_a_later_stage_from_an_r1jax_checkpoint_with_another_tokenizer_is_refused(tokenizer, tmp_path, capsys):
    other = train_tokenizer(["plain text for a tiny tokenizer"] * 20, 300)
    step = run_checkpoint(tmp_path / "other", other)
    fails(tokenizer, f"stages.1.init_from={step}",
          named=["stages[grpo].init_from=", "tokenizer is not the run's", "set tokenizer.path"])
    check(tokenizer, f"stages.1.init_from={run_checkpoint(tmp_path / 'same', tokenizer)}")
    tokenizer.save(tmp_path / "chosen")  # tokenizer.path chose the run's: a checkpoint's own is not compared
    check(tokenizer, f"tokenizer.path={tmp_path / 'chosen'}", f"stages.1.init_from={step}")
    capsys.readouterr()


def write_rows(path, rows, blank_before=None):
    lines = [json.dumps(r) + "\n" for r in rows]
    if blank_before is not None:
        lines.insert(blank_before, "\n")
    path.write_text("".join(lines))
    return path


def rows(n, long_at=None, **extra):
    return [{"prompt": f"Compute {i}+{i}", "answer": str(2 * i), "task": "arithmetic",
             "solution": LONG_SOLUTION if i == long_at else SOLUTION, **extra} for i in range(n)]


def test_sft_rows_longer_than_the_largest_sequence_bucket_are_named_before_training(tokenizer, tmp_path):
    """They failed only when drawn, steps into the stage, advising sampling.prompt_buckets (no SFT setting)."""
    path = write_rows(tmp_path / "sft.jsonl", rows(8, long_at=5), blank_before=2)  # the 6th row is line 7
    message = fails(tokenizer, f"stages.0.data_path={path}",
                    named=["stages[sft].data_path=", "(stage sft)", "row 7", "'Compute 5+5'", "(4096 tokens",
                           "largest SFT sequence bucket", "shorten or remove the row", "max_sequence_length"])
    assert "prompt_buckets" not in message
    check(tokenizer, f"stages.0.data_path={path}", "stages.0.max_sequence_length=65536")  # a stage that takes it
    fails(tokenizer, f"data.path={path}", named=["data.path=", "(stage sft)", "row 7"])
    check(tokenizer, f"data.path={path}", "stages=[{name: grpo, kind: grpo, steps: 1}]")  # GRPO: no solution
    check(tokenizer, f"stages.0.data_path={write_rows(tmp_path / 'ok.jsonl', rows(8))}")


def test_an_sft_batch_too_long_names_the_sft_bound(tokenizer):
    with pytest.raises(UserError) as info:
        sft_batch(tokenizer, "chat", rows(2, long_at=1), SEQUENCE_BUCKETS)
    message = str(info.value)
    assert "largest SFT sequence bucket (4096 tokens" in message and "'Compute 1+1'" in message, message
    assert "prompt_buckets" not in message
    assert sft_batch(tokenizer, "chat", rows(2), SEQUENCE_BUCKETS)["tokens"].shape[0] == 2


def test_an_sft_row_whose_prompt_is_no_tokens_is_named(tmp_path):
    """A tokenizer without bos and an empty prompt (format none): the first completion token has nothing to be
    predicted from. The row's mask was sliced from column -1, so it silently had no targets."""
    tokenizer = load_tokenizer(write_hf_tokenizer(tmp_path, "qwen"))
    empty = [{"prompt": "", "solution": "4"}, {"prompt": "Compute 2+2", "solution": "4"}]
    with pytest.raises(UserError, match=r"the prompt '' is no tokens in prompt format 'none' .*at least one prompt "
                                        r"token"):
        sft_batch(tokenizer, "none", empty, SEQUENCE_BUCKETS)
    with pytest.raises(UserError, match=r"tokenizer.template='none' \(the rows \(stage sft\)\): the prompt ''"):
        check_sft_lengths(tokenizer, "none", empty, None, "the rows (stage sft)")
    batch = sft_batch(tokenizer, "none", empty[1:], SEQUENCE_BUCKETS)
    assert batch["mask"].sum() == len(tokenizer.encode("4")) + 1  # the solution and eos


RS = "{name: rs, kind: rejection_sampling, steps: 1, batch_size: 8}"


@pytest.mark.parametrize("stage,run", [
    ("{name: sft2, kind: sft, steps: 1, batch_size: 8, data_path: rs}", run_sft),
    ("{name: sft2, kind: distill, steps: 1, batch_size: 8, teacher: rs}", run_distill),
])
def test_an_earlier_stages_samples_too_long_are_named_when_the_stage_starts(tokenizer, tmp_path, stage, run):
    """A rejection_sampling stage's dataset does not exist at preflight: its rows are checked as the SFT or
    distill stage reading them starts, before it trains (the context here holds nothing a stage trains with)."""
    config = load_config(TRAIN_CONFIG, [f"stages=[{RS}, {stage}]"])
    ctx = types.SimpleNamespace(config=config, run_dir=tmp_path, tokenizer=tokenizer)
    (tmp_path / "datasets").mkdir()
    dataset = write_rows(tmp_path / "datasets" / "rs.jsonl", rows(8, long_at=3, difficulty=2, reward=3.0))
    with pytest.raises(UserError) as info:
        run(ctx, 1, config.stages[1], None)
    message = str(info.value)
    for fragment in ["stage sft2", str(dataset), "row 4", "(4096 tokens", "stages[rs].max_new_tokens"]:
        assert fragment in message, message
    write_rows(dataset, rows(8, difficulty=2, reward=3.0))
    stage_sft.check_samples(ctx, config.stages[1], str(dataset))  # rows that fit


def test_an_earlier_stages_samples_fill_a_batch_on_any_number_of_processes(tokenizer, tmp_path, monkeypatch):
    """Every process draws the whole batch: 8 rows fill batch_size 8 on 2 processes too (asked for 8 x 2 before,
    refused after the whole sampling stage ran); 7 do not."""
    config = load_config(TRAIN_CONFIG, [f"stages=[{RS}, {{name: sft2, kind: sft, steps: 1, batch_size: 8, "
                                        f"data_path: rs}}]"])
    ctx = types.SimpleNamespace(config=config, run_dir=tmp_path, tokenizer=tokenizer)
    (tmp_path / "datasets").mkdir()
    dataset = write_rows(tmp_path / "datasets" / "rs.jsonl", rows(8, difficulty=2, reward=3.0))
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    stage_sft.check_samples(ctx, config.stages[1], str(dataset))
    write_rows(dataset, rows(7, difficulty=2, reward=3.0))
    with pytest.raises(UserError, match=r"holds 7 rows, fewer than one batch of stages\[sft2\].batch_size=8; "):
        stage_sft.check_samples(ctx, config.stages[1], str(dataset))


def rejection_ctx(config, run_dir, tokenizer, logs):
    """What run_rejection_sampling reads of a StageContext, without a policy, sampler or reward workers (the
    test replaces rollouts with `fake_samples`)."""
    noop = lambda *a, **k: None
    console = types.SimpleNamespace(start_stage=noop, update=noop, end_stage=noop, log=logs.append)
    return types.SimpleNamespace(
        config=config, run_dir=run_dir, tokenizer=tokenizer, primary=True, graphdef=None, sampler=lambda seed: None,
        pool=types.SimpleNamespace(collect=lambda pending: pending), console=console,
        metrics=types.SimpleNamespace(write=lambda row: row), stop=types.SimpleNamespace(requested=lambda step: False),
        checkpoints=types.SimpleNamespace(save=noop, wait=noop))


def fake_samples(texts):
    """sample_and_submit's stand-in: `texts` (a function of the problem) as each problem's samples, scored
    by accuracy (1 for the problem's answer) and format (always 1), as the reward pool would."""
    def sample_and_submit(sampler, policy, tokenizer, template, problems, pool, k, template_vars, **generate):
        rows = [(p, text) for p in problems for text in texts(p)]
        assert len(rows) == k * len(problems)
        items = [ScoreItem(p["prompt"], text, str(p["answer"]), p["task"]) for p, text in rows]
        results = []
        for p, text in rows:
            correct = float(f"<answer> {p['answer']} </answer>" in text)
            results.append(ScoreResult({"accuracy": correct, "format": 1.0}, correct + 1.0, "ok"))
        return types.SimpleNamespace(problems=problems, texts=[t for _, t in rows], items=items, pending=results)
    return sample_and_submit


def test_rejection_sampling_keeps_correct_samples_that_fit_sft(tokenizer, tmp_path, monkeypatch):
    """At threshold 1.0 a wrong answer in good format (0 + 1) was kept, and a sample longer than SFT's
    largest bucket was written to the dataset the next stage refused whole; both are rejected now, each under
    its own reason; the end of the stage warns that the SFT stage reading it cannot fill a batch. A long wrong
    sample is `incorrect` (the first rule it breaks); the right one is second of each prompt's 4 samples, so a
    row read as another prompt's (row % prompts for row // samples) keeps a solution under the wrong prompt."""
    config = load_config(TRAIN_CONFIG, [
        "stages=[{name: rs, kind: rejection_sampling, steps: 1, batch_size: 2, samples_per_prompt: 4, "
        "reward_threshold: 1.0, filters: []}, {name: s, kind: sft, steps: 1, batch_size: 8, data_path: rs}]"])
    right = lambda p: f"<think> ok </think> <answer> {p['answer']} </answer>"
    long = lambda p: "<think> " + "1 + 1 = 2. " * 1200 + f"</think> <answer> {p['answer']} </answer>"
    long_wrong = lambda p: "<think> " + "1 + 1 = 2. " * 1200 + "</think> <answer> -1 </answer>"
    texts = lambda p: ["<think> ok </think> <answer> -1 </answer>", right(p), long(p), long_wrong(p)]
    monkeypatch.setattr(stage_rejection, "sample_and_submit", fake_samples(texts))
    logs = []
    ctx = rejection_ctx(config, tmp_path, tokenizer, logs)
    start = StageStart(policy=(), global_step=0, summary={"evals": []})
    result = stage_rejection.run_rejection_sampling(ctx, 0, config.stages[0], start)
    dataset = tmp_path / "datasets" / "rs.jsonl"
    rows = [json.loads(line) for line in dataset.read_text().splitlines()]
    assert [r["solution"] for r in rows] == [right(r) for r in rows] and len(rows) == 2
    assert len({r["prompt"] for r in rows}) == 2  # one kept per prompt, each under its own
    stats = result.datasets[0]
    assert (stats["candidates"], stats["kept"], stats["rejected"]) == (8, 2, {"incorrect": 4, "sft_length": 2})
    stage_sft.check_sft_lengths(tokenizer, "chat", rows, None, "the dataset")  # every row fits SFT
    warning = " ".join(Text.from_markup(line).plain for line in logs)  # as the run's console prints them
    for fragment in ["warning: rs kept 2 samples", "stage s", "stages[s].batch_size=8"]:
        assert fragment in warning, warning


@pytest.mark.parametrize("stage,run", [
    ("{name: s, kind: sft, steps: 1, batch_size: 8, data_path: rs}", run_sft),
    ("{name: s, kind: distill, steps: 1, batch_size: 8, teacher: rs}", run_distill),
])
def test_too_few_samples_for_a_batch_name_the_stage_the_file_and_the_fix(tokenizer, tmp_path, stage, run):
    """It read "4 problems cannot fill a batch of 8 on each of 1 processes", naming neither."""
    config = load_config(TRAIN_CONFIG, [f"stages=[{RS}, {stage}]"])
    (tmp_path / "datasets").mkdir()
    dataset = write_rows(tmp_path / "datasets" / "rs.jsonl", rows(4, difficulty=2, reward=3.0))
    with pytest.raises(UserError) as info:
        run(types.SimpleNamespace(config=config, run_dir=tmp_path, tokenizer=tokenizer), 1, config.stages[1], None)
    message = str(info.value)
    for fragment in ["stage s", str(dataset), "datasets/rs.jsonl", "holds 4 rows", "stages[s].batch_size=8",
                     "lower stages[s].batch_size", "sample more in stage rs"]:
        assert fragment in message, message


@pytest.mark.parametrize("reader", [
    "{name: s, kind: sft, steps: 1, batch_size: 8, data_path: rs}",
    "{name: s, kind: distill, steps: 1, batch_size: 8, teacher: rs}",
])
def test_rejection_samples_longer_than_the_sft_bucket_are_refused_in_preflight(tokenizer, reader):
    """The largest prompt bucket (64 here) + the stage's max_new_tokens + eos must fit the largest SFT bucket
    when an SFT stage trains on the samples: it failed after the stage had sampled, refusing the dataset."""
    rs = "{{name: rs, kind: rejection_sampling, steps: 1, batch_size: 8{}}}"
    context = "model.max_position_embeddings=16384"  # room for 9,000 new tokens: the SFT buckets are under test
    limit = SEQUENCE_BUCKETS[-1]
    fails(tokenizer, context, f"stages=[{rs.format(', max_new_tokens: 8000')}, {reader}]",
          named=["stages[rs].max_new_tokens=8000", "sampling.prompt_buckets (64)", f"= {64 + 8000 + 1} tokens",
                 f"largest SFT sequence bucket ({limit}: stages[s].max_sequence_length)", "stage s",
                 f"at most {limit - 64 - 1}"])
    fails(tokenizer, context, f"sampling.max_new_tokens={limit - 64}", f"stages=[{rs.format('')}, {reader}]",
          named=[f"sampling.max_new_tokens={limit - 64} (stages[rs].max_new_tokens unset)", "prompt_buckets"])
    check(tokenizer, context, f"stages=[{rs.format(f', max_new_tokens: {limit - 64 - 1}')}, {reader}]")  # it fits
    check(tokenizer, context, f"stages=[{rs.format(', max_new_tokens: 8000')}]")  # no SFT stage reads its samples
    longer = reader.replace("batch_size: 8", "batch_size: 8, max_sequence_length: 8192")
    check(tokenizer, context, f"stages=[{rs.format(', max_new_tokens: 8000')}, {longer}]")  # a reader that takes it
    fails(tokenizer, context, f"stages=[{rs.format(', max_new_tokens: 9000')}, {longer}]",
          named=["largest SFT sequence bucket (8192: stages[s].max_sequence_length)", "raise"])


def test_the_sft_bucket_is_a_stage_setting():
    """SFT rows were bounded by a fixed 4096 tokens (R1's reasoning traces run longer): a stage's
    max_sequence_length sets the largest of its power-of-two buckets."""
    from r1jax.rl.train.sft import sequence_buckets

    assert sequence_buckets() == SEQUENCE_BUCKETS == (32, 64, 128, 256, 512, 1024, 2048, 4096)
    assert sequence_buckets(6000) == (32, 64, 128, 256, 512, 1024, 2048, 4096, 6000)
    assert sequence_buckets(32) == (32,)
    with pytest.raises(UserError, match=r"stages\[sft\]\.max_sequence_length=16: must be in \[32, "):
        load_config(TRAIN_CONFIG, ["stages.0.max_sequence_length=16"])


def test_the_stage_reads_another_runs_samples_in_r1jaxs_own_field_names(tmp_path):
    """As preflight does (test_preflight): a run mapping its data file's fields reads another run's
    rejection-sampling dataset unmapped, and a user's file through the mapping."""
    from r1jax.rl.train.stage_sft import _data_config

    config = load_config("tiny", ["data.fields.prompt=question"])
    ctx = types.SimpleNamespace(config=config, run_dir=tmp_path / "run")
    kept = tmp_path / "other_run" / "datasets" / "rs.jsonl"
    kept.parent.mkdir(parents=True)
    kept.write_text("")
    assert _data_config(ctx, str(kept)).fields == {"prompt": "question"}  # no statistics beside it: a user's file
    (kept.parent / "rs.stats.json").write_text('{"candidates": 2, "kept": 1}')
    read = _data_config(ctx, str(kept))
    assert (read.path, read.fields, read.answer_format) == (str(kept), {}, "raw")
