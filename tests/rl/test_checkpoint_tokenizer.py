"""The tokenizer a checkpoint carries (rl.checkpoint.find_tokenizer): the one saved in the step or beside the
steps, and for a trainer's checkpoint in a run directory the run directory's own; never a `tokenizer/` that
merely sits beside a checkpoint root (the directory above an `r1jax init` root may hold another run's)."""

import numpy as np
import pytest

from r1jax.model.tokenizer import load_tokenizer, train_tokenizer
from r1jax.rl.checkpoint import find_tokenizer
from r1jax.rl.cli.main import main
from r1jax.rl.config import Config
from r1jax.rl.train.checkpointing import TrainCheckpointer

from tests.rl.conftest import TRAIN_CONFIG


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["plain text for a tiny tokenizer"] * 20, 300)


def trainer_checkpoint(run_dir, step=4):
    """`run_dir/checkpoints/step` as the trainer saves it (config, meta and a tree), without the tokenizer copy
    a run keeps in checkpoints/tokenizer (what a run of any version has in run_dir/tokenizer)."""
    checkpointer = TrainCheckpointer(run_dir / "checkpoints", keep=1, keep_best=0, async_save=False)
    checkpointer.save(step, Config(), {"params": {"w": np.zeros(3, np.float32)}}, {"global_step": step})
    checkpointer.close()
    return run_dir / "checkpoints" / str(step)


def test_a_tokenizer_beside_an_init_checkpoint_root_is_not_its(tokenizer, tmp_path, capsys):
    tokenizer.save(tmp_path / "runs" / "tokenizer")  # e.g. a run directory `runs` with an init inside
    for out in (tmp_path / "runs" / "init", tmp_path / "runs" / "checkpoints"):
        assert main(["init", str(TRAIN_CONFIG), str(out)]) == 0
        for path in (out, out / "0"):
            assert find_tokenizer(path) is None
    capsys.readouterr()


def test_a_trainer_checkpoint_finds_the_run_directorys_tokenizer(tokenizer, tmp_path):
    step = trainer_checkpoint(tmp_path / "run")
    tokenizer.save(tmp_path / "run" / "tokenizer")
    for path in (tmp_path / "run", tmp_path / "run" / "checkpoints", step):
        assert find_tokenizer(path) == tokenizer
    # the copy beside the steps comes first (the run's: the same tokenizer)
    other = train_tokenizer(["other words for another small tokenizer"] * 20, 280)
    other.save(tmp_path / "run" / "checkpoints" / "tokenizer")
    assert find_tokenizer(tmp_path / "run") == other
    # a trainer checkpoint root under another name is no run directory's
    moved = trainer_checkpoint(tmp_path / "elsewhere").parent.rename(tmp_path / "elsewhere" / "ckpts")
    tokenizer.save(tmp_path / "elsewhere" / "tokenizer")
    assert find_tokenizer(moved) is None


@pytest.fixture(scope="module")
def checkpoint_with_a_larger_tokenizer(tmp_path_factory):
    """An init checkpoint (vocab_size 512) whose tokenizer beside the steps has more pieces: a copy from another
    model, by hand or by a sync."""
    root = tmp_path_factory.mktemp("ck") / "ck"
    assert main(["init", str(TRAIN_CONFIG), str(root), "model.q_lora_rank=16"]) == 0  # (llama.cpp reads one)
    assert main(["tokenizer", "train", "--input", "arithmetic,algebra", "--vocab-size", "700", "--out",
                 str(root / "tokenizer")]) == 0
    return root


@pytest.mark.parametrize("command", [["generate", "{ck}", "--prompt", "Compute 12+34", "--max-new-tokens", "2"],
                                     ["eval", "{ck}", "--num-problems", "2", "--samples", "1", "--workers", "1"],
                                     ["export-hf", "{ck}", "{out}"]])
def test_a_checkpoints_own_tokenizer_larger_than_the_vocabulary_is_named(capsys, checkpoint_with_a_larger_tokenizer,
                                                                        tmp_path, command):
    """generate blamed `--ids`, a flag never passed ("661 is outside the vocabulary"), eval scored prompts with
    ids past the embedding, export-hf wrote a tokenizer emitting ids the model has no rows for."""
    root = checkpoint_with_a_larger_tokenizer
    pieces = load_tokenizer(root / "tokenizer").vocab_size  # 670: sentencepiece stops short of 700 on this corpus
    assert main([part.format(ck=root, out=tmp_path / "out") for part in command]) == 2
    err = capsys.readouterr().err
    assert pieces > 512 and f"checkpoint {root / '0'}: its tokenizer {root / 'tokenizer'} has {pieces} pieces, " \
                            "more than the model's vocab_size 512" in err and "--ids" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["export-hf", "{ck}", "{out}"], ["export-gguf", "{ck}", "{out}.gguf"]])
def test_an_export_given_the_right_tokenizer_goes_around_the_oversized_one(capsys, checkpoint_with_a_larger_tokenizer,
                                                                          tmp_path, command):
    """The way out the error names: --tokenizer DIR (the carried one was still loaded and checked for a note)."""
    root, good = checkpoint_with_a_larger_tokenizer, tmp_path / "good"
    assert main(["tokenizer", "train", "--input", "arithmetic", "--vocab-size", "400", "--out", str(good)]) == 0
    argv = [part.format(ck=root, out=tmp_path / "out") for part in command] + ["--tokenizer", str(good)]
    assert main(argv) == 0, capsys.readouterr().err[-400:]
    assert "is not the tokenizer" in capsys.readouterr().err
