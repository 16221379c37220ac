"""Command-line values past what the program can hold, output paths that cannot be written, unreadable run files
and inputs too small to use fail naming the culprit: no traceback, no hang, nothing overwritten (found by a fuzz
review of the CLI: each case here was a traceback, a crash, a hang or a silent overwrite)."""

import json

import pytest

from r1jax.errors import UserError
from r1jax.model.tokenizer import Tokenizer
from r1jax.rl.cli.common import check_context
from r1jax.rl.cli.main import build_parser, main, parse_arguments
from r1jax.sharding.distributed import Launch

from tests.rl.conftest import TRAIN_CONFIG

HUGE = "99999999999"  # > 2^31-1


def refused_flag(capsys, *argv):
    """argparse's usage error for `argv` (exit code 2), from parsing alone: nothing runs."""
    with pytest.raises(SystemExit) as exit_:
        parse_arguments(build_parser(), list(argv))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    return err


def refused(capsys, *argv):
    """The command's error line (exit code 2, no traceback)."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"r1jax {argv[0]}: error: " in err, err
    return err


@pytest.mark.parametrize("argv, said", [
    # OverflowError (int32) in the sampler before
    (["generate", "CK", "--ids", "1", "--top-k", HUGE], "argument --top-k: expected an integer <= 2147483647"),
    (["eval", "CK", "--top-k", HUGE], "argument --top-k: expected an integer <= 2147483647"),
    (["generate", "CK", "--ids", "1", "--samples", HUGE], "argument --samples: expected an integer <= 2147483647"),
    (["eval", "CK", "--samples", HUGE], "argument --samples: expected an integer <= 2147483647"),
    (["generate", "CK", "--ids", "1", "--max-new-tokens", HUGE],
     "argument --max-new-tokens: expected an integer <= 1073741824"),
    (["eval", "CK", "--max-new-tokens", str(2**30 + 1)],
     "argument --max-new-tokens: expected an integer <= 1073741824"),
    # OverflowError in jax.random.key before
    (["generate", "CK", "--ids", "1", "--seed", str(2**64)],
     "argument --seed: expected an integer seed in [-2^63, 2^63-1]"),
    # init's seed is the run config's (`seed`): its range, said as the flag's (the config's own error before)
    (["init", "tiny", "OUT", "--seed", str(2**53 + 1)], "argument --seed: expected an integer seed in [-2^53, 2^53]"),
    (["generate", "CK", "--ids", "1", "--seed", str(-2**63 - 1)], "argument --seed: expected an integer seed"),
    # sentencepiece's "cannot parse as int" before
    (["tokenizer", "train", "--input", "arithmetic", "--out", "O", "--vocab-size", HUGE],
     "argument --vocab-size: expected an integer in [272, 2^31-1]"),
    (["tokenizer", "train", "--input", "arithmetic", "--out", "O", "--vocab-size", "10"],
     "argument --vocab-size: expected an integer in [272, 2^31-1], got '10'"),
    # a tokenizer trained on the templates alone before
    (["tokenizer", "train", "--input", "arithmetic", "--out", "O", "--problems-per-level", "0"],
     "argument --problems-per-level: expected an integer >= 1, got 0"),
    (["tokenizer", "train", "--input", "arithmetic", "--out", "O", "--problems-per-level", "-3"],
     "argument --problems-per-level: expected an integer >= 1, got -3"),
    # XLA's CPU client: a RuntimeError, and a SIGSEGV after 55 s for 100000
    (["--cpu-devices", "99999999999999999999", "info"], "argument --cpu-devices: expected an integer <= 4096"),
    (["--cpu-devices", "100000", "info"], "argument --cpu-devices: expected an integer <= 4096"),
    # a RuntimeError in the tokenizer: a byte that is not UTF-8 arrives as a surrogate escape
    (["generate", "CK", "--prompt", "\udcff\u202e</think>"],
     "argument --prompt: not valid UTF-8 text: byte 0xff at character 0"),
    (["generate", "CK", "--prompt", "ok \ud800"], "argument --prompt: not valid UTF-8 text: character U+D800 at "
                                                  "character 3"),
])
def test_values_past_the_limits_are_usage_errors_naming_the_flag(capsys, argv, said):
    assert said in refused_flag(capsys, *argv)


def test_values_at_the_limits_are_taken():
    parser = build_parser()
    args = parse_arguments(parser, ["--cpu-devices", "4096", "generate", "CK", "--ids", "1", "--top-k",
                                    str(2**31 - 1), "--samples", str(2**31 - 1), "--max-new-tokens", str(2**30),
                                    "--seed", str(2**63 - 1), "--top-p", "1"])
    assert (args.cpu_devices, args.top_k, args.samples, args.max_new_tokens, args.seed, args.top_p) == (
        4096, 2**31 - 1, 2**31 - 1, 2**30, 2**63 - 1, 1.0)
    assert parse_arguments(parser, ["init", "tiny", "OUT", "--seed", str(-2**53)]).seed == -2**53
    text = "Grüße, 数学 ✓"
    assert parse_arguments(parser, ["generate", "CK", "--prompt", text]).prompt == text
    assert parse_arguments(parser, ["tokenizer", "train", "--input", "a", "--out", "O", "--vocab-size",
                                    "272"]).vocab_size == 272


@pytest.mark.parametrize("argv", [
    ["compile", "tiny", "--topology", "v5p-8", "seed=1"],  # refused before: "unrecognized arguments: seed=1"
    ["bench", "--preset", "bench", "--quick", "seed=1"],
    ["init", "tiny", "OUT", "--seed", "3", "seed=1"],
    ["export-hf", "CK", "OUT", "--dtype", "bfloat16", "seed=1"],
    ["export-gguf", "CK", "OUT.gguf", "--force", "seed=1"],
    ["train", "tiny", "--run-dir", "R", "seed=1"],
])
def test_overrides_may_follow_a_commands_options(argv):
    assert parse_arguments(build_parser(), argv).overrides == ["seed=1"]


def test_a_run_directory_that_is_a_file_is_named(capsys, tmp_path):
    run = tmp_path / "run"
    run.write_text("mine")  # a FileExistsError traceback before
    assert "--run-dir " + repr(str(run)) + " is a file" in refused(capsys, "train", str(TRAIN_CONFIG), "--run-dir",
                                                                   str(run))
    assert run.read_text() == "mine"
    inside = run / "sub"
    assert f"--run-dir {str(inside)!r} cannot be created: {str(run)!r} is a file" in refused(
        capsys, "train", str(TRAIN_CONFIG), "--run-dir", str(inside))


@pytest.mark.parametrize("name, kind, found", [("plots", "file", "a file"), ("metrics.jsonl", "dir", "a directory"),
                                               ("samples", "dangling", "a symlink to nothing")])
def test_a_run_directory_entry_of_the_wrong_kind_is_named_before_anything_is_written(capsys, tmp_path, monkeypatch,
                                                                                   name, kind, found):
    # a file named plots: the run trained to its end, then stopped with a FileExistsError traceback at its plots
    from r1jax.rl.train.trainer import Trainer

    monkeypatch.setattr(Trainer, "run", lambda self: pytest.fail(f"trained {self.run_dir}"))
    run = tmp_path / "run"
    run.mkdir()
    entry = run / name
    entry.mkdir() if kind == "dir" else entry.symlink_to(tmp_path / "gone") if kind == "dangling" else \
        entry.write_text("mine")
    said = refused(capsys, "train", str(TRAIN_CONFIG), "--run-dir", str(run), "plots=true")
    assert f"run directory {str(run)!r}: {name!r} is {found}, where the run writes a " in said
    assert [p.name for p in run.iterdir()] == [name]  # the user's own, and nothing the start added


def test_a_resume_of_a_run_directory_without_its_config_is_refused(capsys, tmp_path, monkeypatch):
    # what a start refused by its checks leaves: its lock and an empty checkpoints/, no config.yaml; a later
    # `r1jax train --run-dir DIR` (a resume, as the user meant it) trained the default config there, unsaid
    from r1jax.rl.train.trainer import Trainer

    def trains(self):  # a regression fails here at once, not after training the default config for minutes
        raise AssertionError(f"trained {self.run_dir}")

    monkeypatch.setattr(Trainer, "run", trains)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".lock").write_text("")
    said = refused(capsys, "train", "--run-dir", str(run))
    assert f"--run-dir {str(run)!r} holds no config.yaml" in said and "r1jax train CONFIG --run-dir" in said
    assert sorted(p.name for p in run.iterdir()) == [".lock", "checkpoints"]


def test_a_start_with_no_config_says_it_trains_the_default(capsys, tmp_path, monkeypatch):
    # `r1jax train --run-dir DIR` meant as a resume, DIR mistyped: a fresh run of the default config starts
    # there; the console named no config before, so nothing said it was not the run the user meant
    from r1jax.rl.train.trainer import Trainer

    def stops(self):  # stop where training would start: the lines before it are what is checked
        raise UserError("stopped by the test")

    monkeypatch.setattr(Trainer, "run", stops)
    said = " ".join(refused(capsys, "train", "--run-dir", str(tmp_path / "typo"), "seed=3").split())  # unwrapped
    assert "config: tiny (the default: no CONFIG named and no run to resume here) with seed=3" in said
    assert "config:" not in refused(capsys, "train", str(TRAIN_CONFIG), "--run-dir", str(tmp_path / "named"))


def test_an_unreadable_metrics_line_is_named_and_kept(tmp_path):
    from r1jax.rl.train.metrics import MetricsWriter, read_rows

    path = tmp_path / "metrics.jsonl"
    row = json.dumps({"global_step": 1, "step": 1, "stage": "sft"}) + "\n"
    for junk, problem in [(b"\xff\xfe junk\n", "line 2: not UTF-8 text"),  # a UnicodeDecodeError before
                          (b"{not json\n", "line 2: not JSON"),  # the line and every row after it dropped before
                          (b"[1, 2]\n", "line 2: a metrics row must be a JSON object, got list")]:
        data = row.encode() + junk + row.replace("1", "2").encode()
        path.write_bytes(data)
        with pytest.raises(UserError, match=f"{path}: {problem}"):
            MetricsWriter(tmp_path, plots=False).resume(1, ())  # a resume from step 1's checkpoint
        assert path.read_bytes() == data  # nothing dropped
    MetricsWriter(tmp_path, plots=False).resume(0, ())  # a run starting over keeps no row, so reads none
    assert path.read_bytes() == b""
    path.write_bytes(row.encode() + b'{"global_step": 2, "st')  # cut by a kill: still skipped silently
    assert [r["global_step"] for r in read_rows(path)] == [1]


TOKENIZER_TRAIN = ["tokenizer", "train", "--input", "arithmetic", "--problems-per-level", "2"]


def test_tokenizer_output_that_cannot_be_written_or_holds_a_tokenizer_is_refused(capsys, tmp_path):
    file = tmp_path / "f"
    file.write_text("mine")  # a FileExistsError traceback before, after training
    assert f"--out {str(file)!r} is a file" in refused(capsys, *TOKENIZER_TRAIN, "--out", str(file))
    assert f"--out {str(file / 'd')!r} cannot be created: {str(file)!r} is a file" in refused(
        capsys, *TOKENIZER_TRAIN, "--out", str(file / "d"))
    assert "--out '/proc/x' cannot be created" in refused(capsys, *TOKENIZER_TRAIN, "--out", "/proc/x")
    held = tmp_path / "held"
    held.mkdir()
    (held / "tokenizer.model").write_bytes(b"old")  # overwritten silently before
    assert f"--out {str(held)!r} already holds a tokenizer (tokenizer.model); refusing to overwrite" in refused(
        capsys, *TOKENIZER_TRAIN, "--out", str(held))
    assert file.read_text() == "mine" and (held / "tokenizer.model").read_bytes() == b"old"
    assert not list(tmp_path.glob(".r1jax-write-check-*"))


def test_a_tokenizer_output_that_is_a_symlink_to_nothing_is_refused_before_training(capsys, tmp_path, monkeypatch):
    """A dangling --out passed the checks (its nearest existing parent is writable), trained, then failed to
    save with "cannot be written: File exists": now named as a symlink to nothing, before any training."""
    import r1jax.model.tokenizer as tokenizer_module

    link = tmp_path / "out"
    link.symlink_to(tmp_path / "gone")
    monkeypatch.setattr(tokenizer_module, "train_tokenizer", lambda *a, **k: pytest.fail("trained"))
    err = refused(capsys, *TOKENIZER_TRAIN, "--out", str(link))
    assert f"--out {str(link)!r} is a symlink to {str(tmp_path / 'gone')!r}, which does not exist" in err
    assert link.is_symlink() and not (tmp_path / "gone").exists()


def test_tokenizer_save_names_a_path_it_cannot_write(tmp_path):
    (tmp_path / "f").write_text("")
    tokenizer = Tokenizer.__new__(Tokenizer)
    tokenizer.model_proto = b"proto"
    with pytest.raises(UserError, match=f"tokenizer '{tmp_path / 'f' / 'tokenizer.model'}' cannot be written"):
        tokenizer.save(tmp_path / "f")


@pytest.mark.parametrize("name, text, said", [
    ("empty.txt", "", "holds 0 non-blank lines of text; a tokenizer needs at least 10"),
    ("one.txt", "a\n\n  \n", "holds 1 non-blank line of text; a tokenizer needs at least 10"),
    ("rows.jsonl", '{"x": "y"}\n' * 30, "holds 0 non-blank lines of text in its rows' prompt, answer, solution and "
                                        "completion fields"),
])
def test_a_tokenizer_corpus_with_next_to_no_text_is_refused(capsys, tmp_path, name, text, said):
    (tmp_path / name).write_text(text)  # a tokenizer of the templates alone was written before
    out = tmp_path / "out"
    err = refused(capsys, "tokenizer", "train", "--input", str(tmp_path / name), "--out", str(out))
    assert f"--input {str(tmp_path / name)!r} {said}" in err
    assert not out.exists()


def test_a_small_real_corpus_still_trains(capsys, tmp_path):
    (tmp_path / "ten.txt").write_text("".join(f"line {i} of a small corpus\n" for i in range(10)))
    assert main(["tokenizer", "train", "--input", str(tmp_path / "ten.txt"), "--out", str(tmp_path / "o")]) == 0
    assert Tokenizer.load(tmp_path / "o").decode(Tokenizer.load(tmp_path / "o").encode("line 3")) == "line 3"


def test_an_output_directory_that_cannot_be_created_is_named(capsys, tmp_path):
    (tmp_path / "f").write_text("mine")  # FileNotFoundError from Orbax before, after the model was built
    assert "output directory '/proc/x/y' cannot be created" in refused(capsys, "init", str(TRAIN_CONFIG),
                                                                         "/proc/x/y")
    out = tmp_path / "f" / "ck"
    assert f"output directory {str(out)!r} cannot be created: {str(tmp_path / 'f')!r} is a file" in refused(
        capsys, "init", str(TRAIN_CONFIG), str(out))


def test_an_empty_output_directory_that_is_read_only_cannot_be_written_not_created(capsys, tmp_path, monkeypatch):
    """It exists, and was said to be one that "cannot be created" (a read-only mount, simulated: root writes
    through permission bits)."""
    import errno
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    (tmp_path / "rofs").mkdir()
    err = refused(capsys, "init", str(TRAIN_CONFIG), str(tmp_path / "rofs"))
    assert f"output directory {str(tmp_path / 'rofs')!r} cannot be written: " in err, err
    assert "(Read-only file system)" in err
    err = refused(capsys, "init", str(TRAIN_CONFIG), str(tmp_path / "rofs" / "new"))  # a new one inside it
    assert f"output directory {str(tmp_path / 'rofs' / 'new')!r} cannot be created: " in err, err


def test_a_gguf_output_that_cannot_be_written_is_named_before_the_weights_load(capsys, tmp_path):
    # a FileNotFoundError traceback for its temporary file beside it, after the weights had loaded
    err = refused(capsys, "export-gguf", str(tmp_path / "no-checkpoint"), "/proc/x.gguf")
    # its OUT is a file: the refusal said "no directory can be made in '/proc'"
    assert "output '/proc/x.gguf' cannot be created: nothing can be written in '/proc'" in err, err
    (tmp_path / "f").write_text("mine")
    assert f"cannot be created: {str(tmp_path / 'f')!r} is a file, not a directory" in refused(
        capsys, "export-gguf", str(tmp_path / "no-checkpoint"), str(tmp_path / "f" / "x.gguf"))


def test_optional_overrides_are_not_named_as_required(capsys):
    for argv, required in ((["init"], "config, out"), (["export-gguf", "CK"], "out"), (["import-hf", "D"], "out")):
        err = refused_flag(capsys, *argv)
        assert err.rstrip().endswith(f"the following arguments are required: {required}"), err


def test_an_allocation_the_device_cannot_hold_is_one_line(capsys, monkeypatch):
    """XLA's out-of-memory error (a JaxRuntimeError) is no bug of r1jax's: one line, exit 2."""
    import jax

    from r1jax.rl.cli import info

    def allocate(args):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 1005022385968 bytes.")

    monkeypatch.setattr(info, "run", allocate)
    err = refused(capsys, "info", "tiny")
    assert "out of memory: RESOURCE_EXHAUSTED: Out of memory allocating 1005022385968 bytes." in err


def test_an_allocation_the_host_cannot_hold_is_one_line(capsys, monkeypatch):
    """numpy's MemoryError copying a device array to the host (eval of 1024 samples x 1,100,000 new tokens) was a
    traceback (exit 1): it is what was asked for not fitting, as XLA's out-of-memory error is."""
    import numpy as np

    from r1jax.rl.cli import info

    def allocate(args):
        np.empty((1 << 40, 1 << 10), np.int32)  # 4 PiB: refused at once, nothing allocated

    monkeypatch.setattr(info, "run", allocate)
    err = refused(capsys, "info", "tiny")
    assert "r1jax info: error: out of memory: Unable to allocate" in err and "ask for fewer rows or tokens" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("timeout", ["10000", "1e6"])
def test_score_timeouts_the_pool_takes_are_not_refused_by_the_batch_deadline(capsys, tmp_path, timeout):
    # ceil(256 / workers) x --timeout past reward_pool.batch_deadline_s's bound was refused naming that field
    err = refused(capsys, "score", str(tmp_path / "missing.jsonl"), "--timeout", timeout)
    assert "missing.jsonl" in err and "does not exist" in err and "batch_deadline" not in err, err


@pytest.mark.parametrize("flags, said", [
    (["--timeout", "1e9"], ["--timeout 1000000000.0: expected", "1e+06"]),  # OverflowError before
    (["--memory-mb", "99999999999999999"], ["--memory-mb 99999999999999999: expected 0 (no limit) or", "1073741824"]),
    (["--workers", HUGE], [f"--workers {HUGE}: expected", "1024"]),  # one bound, the pool's, named as the flag
])
def test_score_bounds_are_named_as_its_flags(capsys, tmp_path, flags, said):
    err = refused(capsys, "score", str(tmp_path / "missing.jsonl"), *flags)
    assert all(fragment in err for fragment in said) and "reward_pool." not in err, err


def test_bench_worker_counts_past_the_pools_bound_are_refused_before_any_measuring(capsys, monkeypatch):
    """`r1jax bench --workers 1,100000` measured for minutes, then failed at the pool figures."""
    from r1jax.rl.bench import suite

    monkeypatch.setattr(suite, "run_bench", lambda *a, **k: pytest.fail("measured before refusing"))
    err = refused(capsys, "bench", "--workers", "1,100000")
    assert "--workers '1,100000': " in err and "reward_pool.workers = 100000" in err and "1024" in err, err
    # an empty list (`--workers=`, a script's unset variable) measured the default counts for minutes
    assert "--workers '': expected comma-separated integers" in refused(capsys, "bench", "--workers=")


def test_a_held_out_scan_of_a_task_space_too_small_fails_quickly(monkeypatch):
    """`r1jax eval --task arithmetic --difficulty 1 --num-problems 100000000` read 50 x 10^8 generated problems
    (hours, no output) before saying the space is too small."""
    from r1jax.rl.data import DataConfig
    from r1jax.rl.data.pipeline import TaskSource
    from r1jax.rl.evaluate import held_out_problems
    from r1jax.rl.train.config import EvalConfig

    reads = []
    original = TaskSource.__getitem__

    def counted(self, index):
        reads.append(index)
        assert len(reads) < 1_000_000, "the scan went on"  # the old scan: 5 x 10^7 reads; now ~10^5
        return original(self, index)

    monkeypatch.setattr(TaskSource, "__getitem__", counted)
    with pytest.raises(ValueError, match=r"only \d+ held-out problems differ from the training data; the task "
                                         r"space is too small for eval.num_problems=1000000"):
        held_out_problems(DataConfig(tasks=("arithmetic",), difficulty=1), EvalConfig(num_problems=1_000_000,
                                                                                      difficulty=1))


@pytest.mark.parametrize("coordinator, said", [
    ("localhost:99999", "--coordinator 'localhost:99999': port 99999 is not in [1, 65535]"),  # accepted before
    ("localhost:0", "port 0 is not in [1, 65535]"),
])
def test_a_coordinator_port_out_of_range_is_named(coordinator, said):
    with pytest.raises(UserError) as info:
        Launch.resolve(coordinator, 1, 0, environ={})
    assert said in str(info.value)


def test_process_counts_and_peer_timeouts_past_the_limits_are_named():
    with pytest.raises(UserError, match=r"--num-processes 2147483648: expected at most 2147483647"):
        Launch.resolve("h:1", 2**31, 0, environ={})
    with pytest.raises(UserError, match=r"--peer-timeout-s 1e\+300: must be at most 1e\+06 seconds"):
        Launch.resolve(peer_timeout_s=1e300, environ={})


def test_a_completion_that_exactly_fills_the_context_fits():
    check_context(24, 8, 32)
    with pytest.raises(UserError, match="32"):
        check_context(25, 8, 32)
    # a prompt that fills the context alone is the culprit, whatever the budget: it named --max-new-tokens 1; its
    # place leads, as the data loaders name a row ("FILE: row N: ...")
    for prompt_tokens in (32, 33):
        with pytest.raises(UserError) as err:
            check_context(1, prompt_tokens, 32, prompt="the prompt in the chat format", where="t.jsonl: row 2")
        assert str(err.value) == (f"t.jsonl: row 2: the prompt in the chat format is {prompt_tokens} tokens long: it "
                                  "fills the model's context of 32 tokens (model.max_position_embeddings) by itself, "
                                  "leaving no room for a new token")
    # a prompt that fits with a budget that does not: the budget's flag leads, the prompt's place beside it
    with pytest.raises(UserError) as err:
        check_context(25, 8, 32, prompt="the prompt in the chat format", where="t.jsonl: row 2")
    assert str(err.value) == ("--max-new-tokens 25: the prompt in the chat format (t.jsonl: row 2) of 8 tokens and 25 "
                              "new tokens pass the model's context of 32 tokens (model.max_position_embeddings)")

