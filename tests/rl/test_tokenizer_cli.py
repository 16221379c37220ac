"""`r1jax tokenizer train` (rl/cli/tokenizer.py): its flags reach the training (--model-type, --seed, the default
--vocab-size), its JSON summary says the requested size beside the one reached, tokenizer.json in --out is a
tokenizer too (not overwritten), and `math` (no generator: a data set) is not a task to train on."""

import json
import re

from r1jax.model.hf_tokenizer import read_model_proto
from r1jax.model.tokenizer import Tokenizer, train_tokenizer
from r1jax.rl.cli.main import main
from r1jax.rl.data import task_corpus


def train(capsys, *flags):
    assert main(["tokenizer", "train", *flags], as_program=False) == 0
    return json.loads(capsys.readouterr().out)


def test_model_type_and_seed_reach_the_training(tmp_path, capsys):
    summary = train(capsys, "--input", "arithmetic", "--problems-per-level", "5", "--vocab-size", "300", "--seed", "7",
                    "--model-type", "unigram", "--out", str(tmp_path / "u"))
    tok = Tokenizer.load(tmp_path / "u")
    assert read_model_proto(tok.model_proto)[0] == "unigram"
    assert summary == {"path": str(tmp_path / "u" / "tokenizer.model"), "vocab_size": tok.vocab_size,
                       "requested_vocab_size": 300, "input": "arithmetic"}
    train(capsys, "--input", "arithmetic", "--problems-per-level", "5", "--vocab-size", "300", "--seed", "7",
          "--out", str(tmp_path / "b7"))
    train(capsys, "--input", "arithmetic", "--problems-per-level", "5", "--vocab-size", "300",
          "--out", str(tmp_path / "b0"))  # --seed defaults to 0
    b7, b0 = (Tokenizer.load(tmp_path / d).model_proto for d in ("b7", "b0"))
    assert read_model_proto(b7)[0] == "bpe"  # the default algorithm
    assert b7 == train_tokenizer(task_corpus(["arithmetic"], 5, 7), 300, "bpe").model_proto
    assert b0 == train_tokenizer(task_corpus(["arithmetic"], 5, 0), 300, "bpe").model_proto != b7


def test_the_summary_says_the_requested_size_and_the_default_is_512(tmp_path, capsys):
    (tmp_path / "small.txt").write_text("".join(f"line {i} of a small corpus\n" for i in range(12)))
    summary = train(capsys, "--input", str(tmp_path / "small.txt"), "--vocab-size", "5000", "--out", str(tmp_path / "s"))
    reached = Tokenizer.load(tmp_path / "s").vocab_size
    assert reached < 5000 and summary["vocab_size"] == reached and summary["requested_vocab_size"] == 5000
    summary = train(capsys, "--input", "arithmetic", "--problems-per-level", "20", "--out", str(tmp_path / "d"))
    assert summary["requested_vocab_size"] == 512 and summary["vocab_size"] == Tokenizer.load(tmp_path / "d").vocab_size


def test_a_hugging_face_tokenizer_in_out_is_not_overwritten_and_math_is_no_task(tmp_path, capsys):
    held = tmp_path / "held"
    held.mkdir()
    (held / "tokenizer.json").write_text("{}")
    assert main(["tokenizer", "train", "--input", "arithmetic", "--out", str(held)], as_program=False) == 2
    assert (f"--out {str(held)!r} already holds a tokenizer (tokenizer.json); refusing to overwrite"
            in capsys.readouterr().err)
    assert sorted(p.name for p in held.iterdir()) == ["tokenizer.json"]
    assert main(["tokenizer", "train", "--input", "arithmetic,math", "--out", str(tmp_path / "m")],
                as_program=False) == 2
    named = re.search(r"--input 'arithmetic,math': not a file and not task names \(choose from ([^)]*)\)",
                      capsys.readouterr().err)  # (a test's own task may be registered in this process too)
    assert named and {"algebra", "arithmetic", "code", "countdown"} <= set(named.group(1).split(", "))
    assert "math" not in named.group(1).split(", ")
    assert not (tmp_path / "m").exists()


def test_a_stdout_that_fails_after_the_save_says_the_tokenizer_is_saved(tmp_path, capsys, monkeypatch):
    """`> /dev/full`: the summary's print failed after the save, and the one line said to free space and run
    again, which refuses an --out holding a tokenizer; it now says the tokenizer is saved there."""
    import errno
    import sys

    class Full:  # stdout on a full disk (/dev/full)
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stdout", Full())
    code = main(["tokenizer", "train", "--input", "arithmetic", "--problems-per-level", "5", "--vocab-size", "300",
                 "--out", str(tmp_path / "t")], as_program=False)
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert code == 2 and Tokenizer.load(tmp_path / "t").vocab_size > 256
    assert f"the tokenizer is saved in {tmp_path / 't'} (use it as it is), but its summary could not be printed: " \
           "No space left on device" in err


def test_every_refusal_of_the_command_says_r1jax_tokenizer(tmp_path, capsys):
    """Its flags' refusals (argparse's) read `r1jax tokenizer train: error:` and its input's `r1jax tokenizer:
    error:`: one prefix now, the command's, as every other command's refusals."""
    import pytest

    refusals = [["--input", "arithmetic"],  # --out missing
                ["--input", "arithmetic", "--out", str(tmp_path / "t"), "--vocab-size", "abc"],
                ["--input", "arithmetic", "--out", str(tmp_path / "t"), "--model-type", "wordpiece"],
                ["--input", "no_such_task", "--out", str(tmp_path / "t")]]
    for flags in refusals:
        try:
            code = main(["tokenizer", "train", *flags], as_program=False)
        except SystemExit as exit_:
            code = exit_.code
        assert code == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("r1jax tokenizer: error: ") and "train: error" not in last, last
    with pytest.raises(SystemExit):
        main(["tokenizer", "train", "-h"], as_program=False)
    assert capsys.readouterr().out.startswith("usage: r1jax tokenizer train ")  # its usage still names the action
