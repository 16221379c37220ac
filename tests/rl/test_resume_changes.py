"""A resume under changed inputs (found by a review of what a user changes between two starts): the config file
given again is read again, a second trainer is kept out of a directory in use, a finished stage is not
lengthened in silence, a changed tokenizer is refused (or, before any checkpoint, built again), a KL term turned
on finds no reference in the checkpoint, another device count is said, and a refused start leaves the run
directory as it was."""

import json
import shutil

import pytest
import yaml

from r1jax.errors import UserError
from r1jax.files import lock_directory
from r1jax.model.tokenizer import load_tokenizer
from r1jax.rl.cli.main import main
from r1jax.rl.config import load_config
from r1jax.rl.data import DataConfig
from r1jax.rl.data.pipeline import read_source
from r1jax.rl.train import trainer as trainer_module
from r1jax.rl.train.trainer import Trainer

from tests.rl.conftest import TRAIN_CONFIG


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A copy of the shared finished run (2 SFT + 3 GRPO steps, checkpoints 2, 4 and 5) to resume or change."""
    return shutil.copytree(finished_run, tmp_path / "run")


def resume_position(config, run_dir, logged=None):
    trainer = Trainer(config, run_dir)
    if logged is not None:
        trainer.console.log = logged.append
    try:
        return trainer._resume_position()
    finally:
        trainer.checkpoints.close()
        trainer.release()


def test_the_config_named_again_is_read_again_and_without_one_the_runs_own(run_copy, tmp_path, monkeypatch):
    """`r1jax train CONFIG --run-dir DIR` on an existing run took DIR/config.yaml and dropped CONFIG's edits
    in silence (an edited learning rate, another preset's whole model): CONFIG is read again now."""
    seen = []

    class Recorder:
        def __init__(self, config, run_dir, console):
            seen.append(config)

        def run(self):
            return {}

    monkeypatch.setattr(trainer_module, "Trainer", Recorder)
    edited = yaml.safe_load((run_copy / "config.yaml").read_text())
    edited["optimizer"]["lr"] = 0.05
    (tmp_path / "edited.yaml").write_text(yaml.safe_dump(edited))
    assert main(["train", str(tmp_path / "edited.yaml"), "--run-dir", str(run_copy)]) == 0
    assert main(["train", "--run-dir", str(run_copy), "seed=3"]) == 0  # no CONFIG: the run's own
    assert main(["train", "seed=4", "--run-dir", str(run_copy)]) == 0  # an override in CONFIG's place: the same
    assert [(c.optimizer.lr, c.seed) for c in seen] == [(0.05, 0), (0.001, 3), (0.001, 4)]


def test_a_second_trainer_is_kept_out_of_a_directory_in_use(run_copy):
    """Two trainers on one directory both ran to the end: each step's row twice, checkpoints of either config."""
    config = load_config(run_copy / "config.yaml")
    held = lock_directory(run_copy, "run directory")  # as another trainer's process holds it
    try:
        with pytest.raises(UserError, match=r"run directory .* is in use by another trainer \(pid \d+ on "):
            Trainer(config, run_copy)
    finally:
        held.close()
    trainer = Trainer(config, run_copy)  # let go: it opens
    with pytest.raises(UserError, match="in use"):
        Trainer(config, run_copy)
    trainer.checkpoints.close()
    trainer.release()
    with pytest.raises(UserError, match="model.hidden_size"):  # a refused run lets the directory go as well
        Trainer(load_config(run_copy / "config.yaml", ["model.hidden_size=48"]), run_copy).run()
    assert resume_position(config, run_copy).stage_index == 2


def test_a_finished_stage_made_longer_is_refused_and_a_shorter_one_logged(run_copy):
    """stages.1.steps 3 -> 5 on a run whose grpo stage had finished was logged as a change and then ran
    nothing; its end checkpoint holds no optimizer state or data position to go on from."""
    with pytest.raises(UserError, match=r"stages\[grpo\]\.steps=5: the stage finished at 3 steps .*"
                                        r"\{name: grpo_more, kind: grpo, steps: 2\}"):
        resume_position(load_config(run_copy / "config.yaml", ["stages.1.steps=5"]), run_copy)
    logged = []
    resume_position(load_config(run_copy / "config.yaml", ["stages.1.steps=2"]), run_copy, logged)
    assert any("stages.1.steps: 3 -> 2" in line for line in logged)


def test_another_tokenizer_is_refused_on_resume_and_built_again_before_any_checkpoint(run_copy, monkeypatch):
    """The run's tokenizer/ was kept whatever tokenizer.* said (logged as a change, and ignored); without a
    checkpoint (the run starts over) the old one was kept too, with no word."""
    with pytest.raises(UserError, match=r"tokenizer\.vocab_size: checkpoint 512 vs config 400"):
        resume_position(load_config(run_copy / "config.yaml", ["tokenizer.vocab_size=400"]), run_copy)
    saved_type = load_config(run_copy / "config.yaml").tokenizer.model_type
    other = "unigram" if saved_type == "bpe" else "bpe"
    with pytest.raises(UserError, match=rf"tokenizer\.model_type: checkpoint '{saved_type}' vs config '{other}'"):
        resume_position(load_config(run_copy / "config.yaml", [f"tokenizer.model_type={other}"]), run_copy)
    shutil.rmtree(run_copy / "checkpoints")
    saved = run_copy / "tokenizer"
    built = []
    real = trainer_module.run_tokenizer
    monkeypatch.setattr(trainer_module, "run_tokenizer", lambda config: built.append(config) or real(config))
    resume_position(load_config(run_copy / "config.yaml"), run_copy)  # the same settings: the saved one
    assert built == [] and load_tokenizer(saved).vocab_size == 512
    trainer = Trainer(load_config(run_copy / "config.yaml", ["tokenizer.vocab_size=400"]), run_copy)
    try:
        assert len(built) == 1 and trainer.tokenizer.vocab_size == 400
        assert load_tokenizer(saved).vocab_size == 512  # the new one replaces it once the start's checks pass
        trainer._begin()
    finally:
        trainer.checkpoints.close()
        trainer.release()
    assert load_tokenizer(saved).vocab_size == 400 and not (run_copy / ".tokenizer.new").exists()


def test_a_kl_term_turned_on_and_another_device_count_resume_saying_so(run_copy):
    """A checkpoint saved without a KL term holds no reference: a resume with grpo.kl_coef > 0 failed with
    "checkpoint ... is incomplete: it lacks the item 'ref'" (blaming a sound checkpoint); on another device count
    the resume said nothing. In-process: the run was saved on 2 devices, the tests have 8 (an `r1jax
    --cpu-devices 1` subprocess said the same for 1 device, at the cost of a process and its programs)."""
    shutil.rmtree(run_copy / "checkpoints" / "5")
    shutil.rmtree(run_copy / "checkpoints" / "4" / "ref")  # as a run under grpo.kl_coef=0 saves it
    logged = []
    trainer = Trainer(load_config(run_copy / "config.yaml"), run_copy)  # `r1jax train --run-dir` on it
    trainer.console.log = logged.append
    trainer.run()  # to the stage's end: its last step updates against the resumed policy as the reference
    log = " ".join(" ".join(map(str, logged)).split())
    assert "holds no reference policy (its run had no KL term): the KL reference starts from the resumed policy" in log
    assert "was saved on 2 devices in 1 process(es), this run has 8 in 1" in log
    assert (run_copy / "checkpoints" / "5").is_dir()


def files_of(run_dir):
    """Every file of a run directory and its bytes (the trainer's lock aside)."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def as_if_read_from_a_file(run_copy, tmp_path):
    """Checkpoint 4's data position, as a run on a 40-row file read in data.seed 0's order saves it."""
    path = tmp_path / "d.jsonl"
    meta_file = run_copy / "checkpoints" / "4" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["data_state"]["source"] = read_source(DataConfig(path=str(path)))[1]
    meta_file.write_text(json.dumps(meta))
    return [f"data.path={path}"]


REFUSED = {  # what a start changes -> (what the refusal says, the overrides given the run directory)
    "data file": ("the data changed since the checkpoint was saved: it read the generated tasks",
                  lambda run, tmp: [f"data.path={tmp / 'd.jsonl'}"]),
    "data order": ("is read in another order than at the checkpoint: data.seed 0 -> 1",
                   lambda run, tmp: as_if_read_from_a_file(run, tmp) + ["data.seed=1"]),
    "architecture": ("model.hidden_size", lambda run, tmp: ["model.hidden_size=48"]),
    "tokenizer": (r"tokenizer\.vocab_size: checkpoint 512 vs config 400",
                  lambda run, tmp: ["tokenizer.vocab_size=400"]),
    "preflight": ("grpo.prompts_per_step", lambda run, tmp: ["grpo.prompts_per_step=3", "plots=true"]),
    "longer finished stage": ("the stage finished at 3 steps", lambda run, tmp: ["stages.1.steps=5"]),
    # an earlier stage's steps changed: it trained nothing, and config.yaml then said it had
    "earlier stage's steps": (r"stages\[sft\]\.steps=99: the stage finished at 2 steps before checkpoint",
                              lambda run, tmp: ["stages.0.steps=99"]),
    "no checkpoint, new tokenizer": ("grpo.prompts_per_step", lambda run, tmp: [
        "tokenizer.vocab_size=400", "grpo.prompts_per_step=3", "plots=true"]),
}


@pytest.mark.parametrize("change", REFUSED)
def test_a_refused_start_leaves_the_run_directory_as_it_was(run_copy, tmp_path, change):
    """A resume on a changed data file (or order) was refused as its stage began: config.yaml already held the
    new config and metrics.jsonl had lost the rows past the checkpoint; a refusal in preflight cut metrics.jsonl
    and redrew the plots; without a checkpoint a tokenizer built anew replaced tokenizer/ under the old
    config.yaml (the next start under the old settings took it for theirs)."""
    match, overrides = REFUSED[change]
    if change != "longer finished stage":  # the grpo stage resumed inside, at step 4 of 5 rows
        shutil.rmtree(run_copy / "checkpoints" / "5")
    if change.startswith("no checkpoint"):  # killed before its first checkpoint
        shutil.rmtree(run_copy / "checkpoints")
        (run_copy / "checkpoints").mkdir()
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"prompt": f"{i} + 1?", "answer": str(i + 1),
                                                          "solution": f"{i + 1}"}) + "\n" for i in range(40)))
    overrides = overrides(run_copy, tmp_path)
    before, names = files_of(run_copy), sorted(p.name for p in run_copy.iterdir())
    with pytest.raises(UserError, match=match):
        Trainer(load_config(run_copy / "config.yaml", overrides), run_copy).run()
    assert files_of(run_copy) == before
    assert sorted(p.name for p in run_copy.iterdir() if p.name != ".lock") == [n for n in names if n != ".lock"]


def test_a_new_run_whose_init_from_checkpoint_is_damaged_leaves_no_run_directory(finished_run, tmp_path):
    """The damage is found as the first stage loads its policy, after the start's files were written: the run
    directory (config.yaml, tokenizer/, an empty checkpoints/) stayed, and the next start took it for a run."""
    damaged = shutil.copytree(finished_run, tmp_path / "damaged")
    for data in (damaged / "checkpoints").rglob("*"):
        if data.is_file() and "params" in data.parts and data.stat().st_size > 1000:
            data.write_bytes(data.read_bytes()[:100])
    run = tmp_path / "new"
    stages = "stages=[{name: sft, kind: sft, steps: 1, batch_size: 8, init_from: %s}]" % damaged
    with pytest.raises(UserError, match="damaged"):
        Trainer(load_config(TRAIN_CONFIG, [stages]), run).run()
    assert not run.exists()
    run.mkdir()  # a directory of the user's: config.yaml and tokenizer/, written as the start began, stayed
    (run / "notes.txt").write_text("mine\n")
    with pytest.raises(UserError, match="damaged"):
        Trainer(load_config(TRAIN_CONFIG, [stages]), run).run()
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]


def test_a_refused_start_of_a_new_run_leaves_no_run_directory(tmp_path):
    # it left its lock and an empty checkpoints/, which a later `r1jax train --run-dir` took for a run
    run = tmp_path / "new" / "run"
    with pytest.raises(UserError, match="grpo.prompts_per_step"):
        Trainer(load_config(TRAIN_CONFIG, ["grpo.prompts_per_step=3"]), run).run()
    assert not run.exists() and (tmp_path / "new").is_dir()  # only what the start made goes
    run.mkdir()  # a directory of the user's: kept as it was (its lock and an empty checkpoints/ stayed there)
    (run / "notes.txt").write_text("mine\n")
    with pytest.raises(UserError, match="grpo.prompts_per_step"):
        Trainer(load_config(TRAIN_CONFIG, ["grpo.prompts_per_step=3"]), run).run()
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"] and (run / "notes.txt").read_text() == "mine\n"


def test_a_run_directory_that_is_not_utf8_is_refused_before_anything_is_made(tmp_path):
    """tensorstore takes UTF-8 paths only: such a run trained its first stage, then failed with a traceback at
    its first save, the stage lost (a Latin-1 directory name arrives from argv as a surrogate escape)."""
    run = tmp_path / "r\udcffun"
    with pytest.raises(UserError, match=r"run directory .* is not valid UTF-8 \(byte 0xff at character \d+\)"):
        Trainer(load_config(TRAIN_CONFIG), run).run()
    assert list(tmp_path.iterdir()) == []


def test_a_stage_cut_below_the_steps_it_has_run_is_refused(run_copy):
    """stages.1.steps 3 -> 1 at checkpoint 4 (the grpo stage's step 2): the stage was closed as done, its end
    checkpoint and config.yaml saying 1 step where it had run 2, and a resume with the true 2 was refused."""
    shutil.rmtree(run_copy / "checkpoints" / "5")
    with pytest.raises(UserError, match=r"stages\[grpo\]\.steps=1: checkpoint .*/4 is at step 2 of the stage; "
                                        r"resume with steps >= 2"):
        resume_position(load_config(run_copy / "config.yaml", ["stages.1.steps=1"]), run_copy)
    assert resume_position(load_config(run_copy / "config.yaml", ["stages.1.steps=2"]), run_copy).stage_index == 1


def test_a_resume_whose_optimizer_state_no_longer_fits_says_so_and_leaves_config_yaml(run_copy):
    """optimizer.grad_clip_norm null on a run saved with clipping: the optimizer's state tree is another, read
    in the stage after config.yaml was written. It said "damaged" (a good checkpoint a user might delete) and
    left config.yaml rewritten, so the run's own plain resume failed the same way."""
    shutil.rmtree(run_copy / "checkpoints" / "5")  # the latest is inside the grpo stage: its state is restored
    before = (run_copy / "config.yaml").read_bytes()
    assert yaml.safe_load(before)["optimizer"]["grad_clip_norm"] is not None
    config = load_config(run_copy / "config.yaml", ["optimizer.grad_clip_norm=null"])
    with pytest.raises(UserError, match=r"checkpoints/4: the item 'opt_state' was saved with another structure "
                                        r"than this run builds .* resume with the saved run's settings"):
        Trainer(config, run_copy).run()
    assert (run_copy / "config.yaml").read_bytes() == before


def test_a_finished_stage_made_one_step_longer_is_refused(run_copy):
    """It would train nothing while config.yaml claimed the new count (+2 was refused, +1 was not tested)."""
    with pytest.raises(UserError, match=r"stages\[grpo\]\.steps=4: the stage finished at 3 steps"):
        resume_position(load_config(run_copy / "config.yaml", ["stages.1.steps=4"]), run_copy)


@pytest.mark.parametrize("steps", [1, 3])
def test_a_stage_finished_before_the_checkpoint_keeps_its_steps(run_copy, steps):
    """stages.0.steps changed on a run resumed in its second stage: the first trained its 2 steps and nothing
    more or less; config.yaml would say otherwise."""
    with pytest.raises(UserError, match=rf"stages\[sft\]\.steps={steps}: the stage finished at 2 steps before "
                                        r"checkpoint .*/5; resume with its 2"):
        resume_position(load_config(run_copy / "config.yaml", [f"stages.0.steps={steps}"]), run_copy)
