"""`r1jax eval`'s options: sampling settings from the flags, else the checkpoint's eval section (R1's
temperature 0.6 / top-p 0.95 unless the run set its own), told on stderr; flags a combination would ignore are
refused or told; progress on stderr at a modest rate, stdout left to --json's object; a training file that has
moved or is gone."""

import dataclasses
import json
import shutil

import pytest

from r1jax.rl import checkpoint as checkpoint_module
from r1jax.rl import evaluate as evaluate_module
from r1jax.rl.cli import eval as eval_cli
from r1jax.errors import UserError
from r1jax.rl.checkpoint import data_source, load_config as checkpoint_config, trained
from r1jax.rl.cli.main import main
from r1jax.rl.config import load_config
from r1jax.rl.data import TaskSource
from r1jax.rl.data.pipeline import read_source
from r1jax.rl.evaluate import held_out_problems
from tests.rl.conftest import TRAIN_CONFIG


def run_main(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def problems_file(tmp_path, count):
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Compute {a}+{a}", "answer": str(2 * a), "task": "arithmetic"})
                            + "\n" for a in range(10, 10 + count)))
    return path


def checkpoint_eval_section(monkeypatch, **eval_fields):
    """The checkpoint `eval` opens carries `eval_fields` in its config's eval section."""
    real = checkpoint_module.open_step_for_inference

    def open_step_for_inference(path):
        config, *rest = real(path)
        return (dataclasses.replace(config, eval=dataclasses.replace(config.eval, **eval_fields)), *rest)

    monkeypatch.setattr(checkpoint_module, "open_step_for_inference", open_step_for_inference)  # imported late


def record_evaluations(monkeypatch):
    """Each evaluation's EvalConfig and problems, with made-up figures in place of sampling them."""
    seen = []

    def evaluate(sampler, states, tokenizer, template, problems, pool, cfg, *args, **kwargs):
        seen.append({"cfg": cfg, "problems": problems})
        return {"k": cfg.samples, "n_problems": len(problems)}, []

    monkeypatch.setattr(evaluate_module, "evaluate", evaluate)
    return seen


def test_sampling_settings_are_the_flags_else_the_checkpoints_eval_section(capsys, finished_run, tmp_path,
                                                                             monkeypatch):
    checkpoint_eval_section(monkeypatch, temperature=1.0, top_p=0.5, top_k=3, samples=3)
    seen = record_evaluations(monkeypatch)
    data = str(problems_file(tmp_path, 2))
    code, _, err = run_main(capsys, "eval", str(finished_run), "--data", data, "--workers", "1", "--json")
    assert code == 0
    cfg = seen[-1]["cfg"]
    assert (cfg.temperature, cfg.top_p, cfg.top_k, cfg.samples) == (1.0, 0.5, 3, 3)  # not R1's 0.6 / 0.95
    assert ("r1jax eval: samples 3 (checkpoint eval.samples), temperature 1.0 (checkpoint eval.temperature), top-p 0.5 "
            "(checkpoint eval.top_p), top-k 3 (checkpoint eval.top_k), max-new-tokens 8 (checkpoint "
            "sampling.max_new_tokens)") in err

    code, _, err = run_main(capsys, "eval", str(finished_run), "--data", data, "--workers", "1", "--json",
                            "--temperature", "0.3", "--top-k", "0", "--max-new-tokens", "5")
    assert code == 0
    cfg = seen[-1]["cfg"]
    assert (cfg.temperature, cfg.top_p, cfg.top_k, cfg.samples) == (0.3, 0.5, 0, 3)  # a flag beats the config
    assert ("temperature 0.3 (--temperature), top-p 0.5 (checkpoint eval.top_p), top-k 0 (--top-k), "
            "max-new-tokens 5 (--max-new-tokens)") in err


def test_a_checkpoint_without_its_own_settings_samples_at_r1s(capsys, finished_run, tmp_path, monkeypatch):
    seen = record_evaluations(monkeypatch)  # tests/rl/data/train_tiny.yaml sets no eval temperature or top-p
    code, _, err = run_main(capsys, "eval", str(finished_run), "--data", str(problems_file(tmp_path, 2)),
                            "--workers", "1", "--json", "--temperature", "0", "--samples", "2")
    assert code == 0 and (seen[-1]["cfg"].top_p, seen[-1]["cfg"].temperature) == (0.95, 0.0)
    assert "temperature 0.0 (--temperature)" in err and "greedy: a problem's 2 samples are one answer" in err


def test_difficulty_with_a_data_file_is_refused_naming_both_flags(capsys, finished_run, tmp_path, monkeypatch):
    seen = record_evaluations(monkeypatch)
    data = str(problems_file(tmp_path, 2))
    code, out, err = run_main(capsys, "eval", str(finished_run), "--data", data, "--difficulty", "3", "--json")
    assert code == 2 and not seen and out == ""  # nothing evaluated
    assert err.startswith("r1jax eval: error: --difficulty 3") and f"--data {data!r}" in err
    assert len(err.strip().splitlines()) == 1


def test_more_problems_asked_than_a_data_file_holds_is_told(capsys, finished_run, tmp_path, monkeypatch):
    seen = record_evaluations(monkeypatch)
    data = str(problems_file(tmp_path, 3))
    code, out, err = run_main(capsys, "eval", str(finished_run), "--data", data, "--num-problems", "5",
                              "--workers", "1", "--json")
    assert code == 0 and len(seen[-1]["problems"]) == 3 == json.loads(out)["n_problems"]
    assert f"--num-problems 5: {data} holds 3 problems; evaluating them all" in err
    code, _, err = run_main(capsys, "eval", str(finished_run), "--data", data, "--num-problems", "2",
                            "--workers", "1", "--json")
    assert code == 0 and len(seen[-1]["problems"]) == 2 and "--num-problems" not in err


def test_progress_goes_to_stderr_and_json_alone_to_stdout(capsys, finished_run, tmp_path, monkeypatch):
    monkeypatch.setattr(eval_cli, "PROGRESS_LINE_INTERVAL_S", 0.0)  # a line per sampler call
    # the run's eval.batch_size 4: two sampler calls for 8 problems
    code, out, err = run_main(capsys, "eval", str(finished_run), "--data", str(problems_file(tmp_path, 8)),
                              "--samples", "2", "--workers", "1", "--json")
    assert code == 0 and json.loads(out)["n_problems"] == 8 and len(out.strip().splitlines()) == 1
    progress = [line for line in err.splitlines() if "problems sampled" in line]
    assert [line.split()[2] for line in progress] == ["4/8", "8/8"], err


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_lines_in_a_log_come_at_most_once_an_interval(capsys, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(eval_cli.time, "monotonic", clock)
    with eval_cli.EvalProgress(total=50) as progress:  # capsys's stderr is no terminal: lines, no bar
        for seconds, done in ((10, 10), (31, 20), (40, 30), (62, 40), (70, 50)):
            clock.now = 100.0 + seconds
            progress.update(done)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == ["r1jax eval: 20/50 problems sampled in 31 s",
                                         "r1jax eval: 40/50 problems sampled in 62 s"]


def test_progress_bar_on_a_terminal_leaves_stdout_alone(capsys, monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich: stderr is a terminal
    monkeypatch.delenv("NO_COLOR", raising=False)
    with eval_cli.EvalProgress(total=8) as progress:
        assert progress.bar is not None
        progress.update(4)
        progress.update(8)
    captured = capsys.readouterr()
    assert captured.out == "" and "8/8" in captured.err


def checkpoint_sft_file(monkeypatch, path):
    """The checkpoint `eval` opens names `path` as its SFT stage's data_path (a cold-start file)."""
    real = checkpoint_module.open_step_for_inference

    def open_step_for_inference(checkpoint):
        config, *rest = real(checkpoint)
        stages = [dataclasses.replace(config.stages[0], data_path=str(path)), *config.stages[1:]]
        return (dataclasses.replace(config, stages=stages), *rest)

    monkeypatch.setattr(checkpoint_module, "open_step_for_inference", open_step_for_inference)


def test_a_moved_training_file_is_read_where_told_or_left_out_when_asked(capsys, finished_run, tmp_path,
                                                                           monkeypatch):
    """The SFT file of a checkpoint, whose prompts the held-out problems skip, moved: `r1jax eval` refused,
    naming the file but no way on. --training-file OLD=NEW reads it at NEW; --ignore-missing-training-files
    evaluates without skipping its prompts, saying so."""
    gone = tmp_path / "gone" / "cold_start.jsonl"
    checkpoint_sft_file(monkeypatch, gone)
    seen = record_evaluations(monkeypatch)
    config = load_config(finished_run / "config.yaml")
    usual = held_out_problems(config.data, dataclasses.replace(config.eval, num_problems=4))
    moved = tmp_path / "cold_start.jsonl"  # the file trained on two of the usual held-out problems
    moved.write_text("".join(json.dumps({"prompt": p["prompt"], "answer": p["answer"], "solution": p["answer"],
                                         "task": "arithmetic"}) + "\n" for p in usual[:2]))
    base = ("eval", str(finished_run), "--num-problems", "4", "--workers", "1", "--json")

    code, out, err = run_main(capsys, *base)
    assert code == 2 and not seen and out == ""
    assert (f"stages[sft].data_path={str(gone)!r}: the checkpoint trained on this file, whose prompts the held-out "
            f"problems must skip, and it is not there: give its new path (--training-file {gone}=NEW_PATH), or "
            "evaluate without skipping its prompts (--ignore-missing-training-files") in " ".join(err.split())

    code, _, err = run_main(capsys, *base, "--training-file", f"{gone}={moved}")
    assert code == 0, err
    prompts = [p["prompt"] for p in seen[-1]["problems"]]
    assert len(prompts) == 4 and not set(prompts) & {p["prompt"] for p in usual[:2]}

    code, _, err = run_main(capsys, *base, "--ignore-missing-training-files")
    assert code == 0 and [p["prompt"] for p in seen[-1]["problems"]] == [p["prompt"] for p in usual]
    assert "is not there (--ignore-missing-training-files): its prompts are not skipped" in " ".join(err.split())


def test_a_moved_training_file_is_read_once_for_its_check_and_its_skipped_prompts(capsys, finished_run, tmp_path,
                                                                                  monkeypatch):
    """--training-file OLD=NEW of the file the checkpoint was reading: NEW was read for the fingerprint check, then
    again for the prompts to skip (a file changed between the reads passed the check with other rows skipped)."""
    from r1jax.rl.data import config as data_config

    gone, moved = tmp_path / "gone" / "cold_start.jsonl", tmp_path / "cold_start.jsonl"
    checkpoint_sft_file(monkeypatch, gone)
    config = load_config(finished_run / "config.yaml")
    usual = held_out_problems(config.data, dataclasses.replace(config.eval, num_problems=4))
    moved.write_text("".join(json.dumps({"prompt": p["prompt"], "answer": p["answer"], "solution": p["answer"],
                                         "task": "arithmetic"}) + "\n" for p in usual[:2]))
    fingerprint = {**read_source(dataclasses.replace(config.data, path=str(moved)))[1], "file": str(gone)}
    monkeypatch.setattr(checkpoint_module, "data_source", lambda step: fingerprint)  # it was reading that file
    reads, real = [], data_config.load_problems_hashed
    monkeypatch.setattr(data_config, "load_problems_hashed",
                        lambda path, *args, **kwargs: reads.append(path) or real(path, *args, **kwargs))
    seen = record_evaluations(monkeypatch)
    code, _, err = run_main(capsys, "eval", str(finished_run), "--num-problems", "4", "--workers", "1", "--json",
                            "--training-file", f"{gone}={moved}")
    assert code == 0, err
    assert reads.count(str(moved)) == 1
    assert not {p["prompt"] for p in seen[-1]["problems"]} & {p["prompt"] for p in usual[:2]}


def test_weights_that_trained_on_nothing_skip_no_problem(capsys, finished_run, tmp_path, monkeypatch):
    """`r1jax init` and `import-hf` write weights that trained on nothing, under a config whose data section is
    the default's: eval skipped its generated problems as trained on, and an imported checkpoint's 100,000
    arithmetic problems at difficulty 1 left none ("only 0 held-out problems differ from the training data")."""
    out = tmp_path / "init"
    assert main(["init", str(TRAIN_CONFIG), str(out), "data.difficulty=1", "data.num_problems=100000"]) == 0
    shutil.copytree(finished_run / "tokenizer", out / "tokenizer")
    assert not trained(out) and not trained(out / "0") and trained(finished_run)
    seen = record_evaluations(monkeypatch)
    config = checkpoint_config(out)
    code, _, err = run_main(capsys, "eval", str(out), "--num-problems", "4", "--workers", "1", "--json")
    assert code == 0, err
    trained_on = {p["prompt"] for p in TaskSource([config.data.task("arithmetic")], config.data.seed, 100000)}
    prompts = [p["prompt"] for p in seen[-1]["problems"]]
    assert len(prompts) == 4 and set(prompts) <= trained_on  # the config's "training" problems, not skipped
    # nor does a held-out file's row that the config's data would generate (eval.path)
    source = TaskSource([config.data.task("arithmetic")], config.data.seed, 3)
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join(json.dumps({"prompt": source[i]["prompt"], "answer": source[i]["answer"],
                                            "task": "arithmetic"}) + "\n" for i in range(3)))
    with_file = tmp_path / "init_file"
    assert main(["init", str(TRAIN_CONFIG), str(with_file), "data.difficulty=1", "data.num_problems=100000",
                 f"eval.path={held_out}"]) == 0
    shutil.copytree(finished_run / "tokenizer", with_file / "tokenizer")
    code, _, err = run_main(capsys, "eval", str(with_file), "--workers", "1", "--json")
    assert code == 0, err
    assert [p["prompt"] for p in seen[-1]["problems"]] == [source[i]["prompt"] for i in range(3)]
    (tmp_path / "b.jsonl").write_text("")
    code, _, err = run_main(capsys, "eval", str(out), "--training-file", f"a.jsonl={tmp_path / 'b.jsonl'}")
    assert code == 2 and "holds weights that trained on nothing (written by r1jax init or import-hf)" in err


def test_a_training_file_flag_that_names_no_file_of_the_checkpoint_is_refused(capsys, finished_run, tmp_path):
    (tmp_path / "new.jsonl").write_text("")
    code, _, err = run_main(capsys, "eval", str(finished_run), "--training-file", f"old.jsonl={tmp_path / 'new.jsonl'}")
    assert code == 2 and "the checkpoint names no training file 'old.jsonl'; the files it names: none" in err
    code, _, err = run_main(capsys, "eval", str(finished_run), "--training-file", "old.jsonl")
    assert code == 2 and "--training-file 'old.jsonl': expected OLD=NEW" in err
    code, _, err = run_main(capsys, "eval", str(finished_run), "--data", str(tmp_path / "new.jsonl"),
                            "--ignore-missing-training-files")
    assert code == 2 and "drop --ignore-missing-training-files or --data" in err


def test_a_moved_training_file_must_hold_the_rows_the_checkpoint_read(finished_run, tmp_path):
    """--training-file OLD=NEW took any NEW (one row for the 20 trained on): the held-out set then skipped other
    prompts, and pass@1 could count problems trained on. The checkpoint's fingerprint of the file it was reading
    (rows, SHA-256) must match NEW's, in any order; a file it has no fingerprint of is taken as before."""
    assert data_source(finished_run)["tasks"]["tasks"] == list(checkpoint_config(finished_run).data.tasks)  # generated
    rows = [json.dumps({"prompt": f"Compute {i}+1", "answer": str(i + 1), "task": "arithmetic"}) for i in range(20)]
    old = tmp_path / "train.jsonl"
    old.write_text("".join(row + "\n" for row in rows))
    config = load_config(TRAIN_CONFIG, [f"data.path={old}"])
    source = read_source(config.data)[1]
    same, other = tmp_path / "moved.jsonl", tmp_path / "other.jsonl"
    same.write_text(old.read_text())
    other.write_text(rows[0] + "\n")
    old.unlink()
    data, _, _, _ = eval_cli.training_files(config, {str(old): str(same)}, False, source)
    assert data.path == str(same)
    reordered = dataclasses.replace(config, data=dataclasses.replace(config.data, seed=config.data.seed + 1))
    assert eval_cli.training_files(reordered, {str(old): str(same)}, False, source)[0].path == str(same)
    with pytest.raises(UserError) as info:
        eval_cli.training_files(config, {str(old): str(other)}, False, source)
    assert f"--training-file {old}={other}: data file {str(other)!r} (the checkpoint read {str(old)!r}) changed " \
           "since the checkpoint was saved: 20 rows then, 1 now" in str(info.value)
    elsewhere = {**source, "file": str(tmp_path / "another.jsonl")}  # a fingerprint of another stage's file
    assert eval_cli.training_files(config, {str(old): str(other)}, False, elsewhere)[0].path == str(other)


def test_eval_of_a_trained_checkpoint_skips_its_generated_training_problems(capsys, finished_run, monkeypatch):
    """With the eval seed set to the training seed, the held-out source reads training's problems first: none of
    them may be evaluated (the checkpoint's own seed rarely draws one, so a lost skip went unseen)."""
    config = checkpoint_config(finished_run)
    assert config.data.path is None  # trained on generated problems
    checkpoint_eval_section(monkeypatch, seed=config.data.seed)
    seen = record_evaluations(monkeypatch)
    code, _, err = run_main(capsys, "eval", str(finished_run), "--num-problems", "50", "--workers", "1", "--json")
    assert code == 0, err
    trained_on = {p["prompt"] for p in TaskSource([config.data.task(t) for t in config.data.tasks],
                                                  config.data.seed, config.data.num_problems)}
    prompts = [p["prompt"] for p in seen[-1]["problems"]]
    assert len(prompts) == 50 and not set(prompts) & trained_on
    assert seen[-1]["problems"] == held_out_problems(config.data, seen[-1]["cfg"])


def test_eval_table_shows_each_figures_own_value_with_k_samples(capsys):
    """Each row its own figure, pass@k included (at k = 1 pass@k is pass@1's row, so names alone told nothing)."""
    figures = {"k": 4, "n_problems": 6, "pass@1": 0.125, "cons@4": 0.25, "pass@4": 0.75, "format_rate": 0.5,
               "response_length": 42.0, "reflection_rate": 0.375, "accuracy_by_difficulty": {"1": 0.625, "2": 0.875}}
    eval_cli._print_table(figures)
    out = capsys.readouterr().out
    assert "6 problems x 4 samples" in out
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip()
            for line in out.splitlines() if line.count("│") == 3}
    assert rows == {"pass@1": "0.125", "cons@4": "0.250", "pass@4": "0.750", "format_rate": "0.500",
                    "response_length": "42.000", "reflection_rate": "0.375",
                    "pass@1 difficulty 1": "0.625", "pass@1 difficulty 2": "0.875"}


def test_sigterm_stops_an_evaluation_as_ctrl_c_does(capsys, finished_run, tmp_path, monkeypatch):
    """A job's SIGTERM killed eval outright (exit -15), its reward workers left to the resource tracker's "leaked
    semaphore objects" warnings; now the pool closes and one line says so, exit 143."""
    import os
    import signal

    from r1jax.rl import rewards as rewards_module

    pools, closed = [], []

    class RecordedPool(rewards_module.RewardPool):  # the real pool, its close recorded
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            pools.append(self)

        def close(self, *args, **kwargs):
            closed.append(self)
            super().close(*args, **kwargs)

    def evaluate(*args, **kwargs):  # the job's time runs out while the problems are sampled
        os.kill(os.getpid(), signal.SIGTERM)
        pytest.fail("SIGTERM did not stop the evaluation")

    def unhandled(signum, frame):  # stands in for the default action (ending the test process) on the old code
        raise RuntimeError("SIGTERM not handled by eval")

    monkeypatch.setattr(evaluate_module, "evaluate", evaluate)
    monkeypatch.setattr(rewards_module, "RewardPool", RecordedPool)  # rl.cli.eval imports it when it runs
    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        code, out, err = run_main(capsys, "eval", str(finished_run), "--data", str(problems_file(tmp_path, 2)),
                                  "--workers", "1", "--json")
        assert signal.getsignal(signal.SIGTERM) is unhandled  # put back
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert code == 128 + signal.SIGTERM and out == ""
    assert len(pools) == 1 and closed == pools  # its workers stopped, none left behind
    assert err.strip().splitlines()[-1] == "r1jax eval: interrupted (SIGTERM)" and "Traceback" not in err
