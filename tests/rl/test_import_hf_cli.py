"""`r1jax import-hf`'s own checks (rl/cli/import_hf.py): a tokenizer that exactly fills the model's vocabulary is
imported with it, one token more is refused naming both sizes before anything is written, and the architecture's
notes (here: DeepSeek-V3's multi-token-prediction layers, skipped) are printed."""

import dataclasses
import json

from r1jax.model.tokenizer import load_tokenizer
from r1jax.rl.checkpoint import find_tokenizer
from r1jax.rl.cli.main import main
from tests.model.hf_models import random_hf_model
from tests.model.hf_tokenizer_files import write_hf_tokenizer
from tests.model.tiny import DEEPSEEK


def test_a_tokenizer_exactly_filling_the_vocabulary_is_imported_and_one_more_token_is_refused(tmp_path, capsys):
    tokens = load_tokenizer(write_hf_tokenizer(tmp_path / "tok", "deepseek")).vocab_size
    hf_dir = tmp_path / "hf"
    random_hf_model(dataclasses.replace(DEEPSEEK, vocab_size=tokens), seed=1).save_pretrained(hf_dir)
    write_hf_tokenizer(hf_dir, "deepseek")
    config = json.loads((hf_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(json.dumps({**config, "num_nextn_predict_layers": 1}))
    assert main(["import-hf", str(hf_dir), str(tmp_path / "ck")], as_program=False) == 0
    out = capsys.readouterr().out
    assert "note: num_nextn_predict_layers=1: the multi-token-prediction layers are ignored" in out, out
    assert "with its tokenizer)" in out
    assert find_tokenizer(tmp_path / "ck") == load_tokenizer(hf_dir)  # in OUT/tokenizer, where generate finds it
    assert (tmp_path / "ck" / "tokenizer" / "tokenizer.json").read_bytes() == (hf_dir / "tokenizer.json").read_bytes()

    (hf_dir / "config.json").write_text(json.dumps({**config, "vocab_size": tokens - 1}))
    assert main(["import-hf", str(hf_dir), str(tmp_path / "ck2")], as_program=False) == 2
    err = capsys.readouterr().err
    assert (f"r1jax import-hf: error: {hf_dir}: the tokenizer's {tokens} tokens do not fit the model's "
            f"vocab_size {tokens - 1}") in err, err
    assert not (tmp_path / "ck2").exists()


def test_export_of_an_imported_checkpoint_keeps_or_replaces_the_chat_template_as_template_says(tmp_path, capsys):
    """--template chat (the Hugging Face tokenizer's own format) keeps its files as they came; r1_zero replaces
    the chat template; the exported tokenizer_config.json says which."""
    hf_dir = tmp_path / "hf"
    random_hf_model(dataclasses.replace(DEEPSEEK, vocab_size=640), seed=1).save_pretrained(hf_dir)  # > 424 tokens
    write_hf_tokenizer(hf_dir, "deepseek")
    assert main(["import-hf", str(hf_dir), str(tmp_path / "ck")], as_program=False) == 0
    own = json.loads((hf_dir / "tokenizer_config.json").read_text())["chat_template"]
    # into a directory that holds anything: refused, nothing overwritten
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    capsys.readouterr()
    assert main(["import-hf", str(hf_dir), str(tmp_path / "full")], as_program=False) == 2
    assert (f"r1jax import-hf: error: output directory {str(tmp_path / 'full')!r} exists and is not empty; refusing "
            "to overwrite") in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["x"] and (tmp_path / "full" / "x").read_text() == "keep me"
    for template, kept in (("chat", True), ("r1_zero", False)):
        out = tmp_path / template
        assert main(["export-hf", str(tmp_path / "ck"), str(out), "--template", template], as_program=False) == 0
        said = capsys.readouterr().out
        written = json.loads((out / "tokenizer_config.json").read_text())["chat_template"]
        if kept:
            assert said.rstrip().endswith("with the Hugging Face tokenizer's files as they came)"), said
            assert (out / "tokenizer_config.json").read_bytes() == (hf_dir / "tokenizer_config.json").read_bytes()
        else:
            assert "its chat template replaced by one that renders the r1_zero prompt format" in said, said
            assert written != own
    # a checkpoint trained on r1_zero exported without --template: its files as they came, with a note naming the
    # format and the flag that writes a template for it
    assert main(["import-hf", str(hf_dir), str(tmp_path / "ck_r1"), "tokenizer.template=r1_zero"],
                as_program=False) == 0
    capsys.readouterr()
    assert main(["export-hf", str(tmp_path / "ck_r1"), str(tmp_path / "plain")], as_program=False) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert ("with the Hugging Face tokenizer's files as they came; note: the checkpoint's config prompts with the "
            "r1_zero format") in said and "export with --template r1_zero" in said, said
    assert (tmp_path / "plain" / "tokenizer_config.json").read_bytes() == (hf_dir / "tokenizer_config.json").read_bytes()


def test_a_tokenizer_the_disk_refused_leaves_no_partial_directory(tmp_path, capsys, monkeypatch):
    """The weights saved, a full disk refused the tokenizer's copy: OUT kept the weights without it, and the next
    try once there was room was refused ("exists and is not empty; refusing to overwrite")."""
    import errno

    from r1jax.model import tokenizer_json

    tokens = load_tokenizer(write_hf_tokenizer(tmp_path / "tok", "deepseek")).vocab_size
    hf_dir = tmp_path / "hf"
    random_hf_model(dataclasses.replace(DEEPSEEK, vocab_size=tokens), seed=1).save_pretrained(hf_dir)
    write_hf_tokenizer(hf_dir, "deepseek")

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(tokenizer_json, "write_atomically", full)
    for out in (tmp_path / "ck", tmp_path / "empty"):  # made by the command, or an empty directory given
        if out.name == "empty":
            out.mkdir()
        assert main(["import-hf", str(hf_dir), str(out)], as_program=False) == 2
        err = capsys.readouterr().err
        assert "no space left on device" in err and "Traceback" not in err, err
        assert not out.exists() if out.name == "ck" else not any(out.iterdir())


def test_a_stopped_import_leaves_no_partial_step_and_the_same_command_runs_again(tmp_path, capsys, monkeypatch):
    """Ctrl-C while the checkpoint was saved left OUT/0.orbax-checkpoint-tmp (or a step committed as it stopped),
    and the same command then said "exists and is not empty; refusing to overwrite"."""
    import orbax.checkpoint as ocp

    hf_dir = tmp_path / "hf"
    random_hf_model(DEEPSEEK, seed=1).save_pretrained(hf_dir)
    wait = ocp.CheckpointManager.wait_until_finished

    def stopped(manager):  # the save written, then Ctrl-C before the command returns
        wait(manager)
        raise KeyboardInterrupt

    for out in (tmp_path / "ck", tmp_path / "empty"):  # made by the command, or an empty directory given
        if out.name == "empty":
            out.mkdir()
        with monkeypatch.context() as patch:
            patch.setattr(ocp.CheckpointManager, "wait_until_finished", stopped)
            assert main(["import-hf", str(hf_dir), str(out)], as_program=False) == 130
        assert "interrupted (Ctrl-C)" in capsys.readouterr().err
        assert not out.exists() if out.name == "ck" else list(out.iterdir()) == []
        assert main(["import-hf", str(hf_dir), str(out)], as_program=False) == 0
        assert (out / "0" / "params").is_dir()


def test_a_sigterm_while_the_tokenizer_is_copied_leaves_no_step_without_it(tmp_path, capsys, monkeypatch):
    """The tokenizer's copy ran outside the SIGTERM handling of the weights' save: a job's time limit there ended
    the process at once, OUT holding the weights without their tokenizer (and the next try refused)."""
    from r1jax.model import tokenizer_json
    from tests.rl.test_export_interrupted import sigterm

    tokens = load_tokenizer(write_hf_tokenizer(tmp_path / "tok", "deepseek")).vocab_size
    hf_dir = tmp_path / "hf"
    random_hf_model(dataclasses.replace(DEEPSEEK, vocab_size=tokens), seed=1).save_pretrained(hf_dir)
    write_hf_tokenizer(hf_dir, "deepseek")
    out = tmp_path / "ck"
    with monkeypatch.context() as patch:
        patch.setattr(tokenizer_json, "write_atomically", lambda path, data: sigterm())
        assert main(["import-hf", str(hf_dir), str(out)], as_program=False) == 143
    assert "interrupted (SIGTERM)" in capsys.readouterr().err and not out.exists()
    assert main(["import-hf", str(hf_dir), str(out)], as_program=False) == 0
    assert (out / "tokenizer" / "tokenizer.json").is_file()


def test_a_directory_with_tokenizer_files_but_no_tokenizer_json_names_the_files_it_has(tmp_path, capsys):
    """Found by a mutation review (round 19): the line names the files the directory holds, and the layers."""
    hf_dir = tmp_path / "hf"
    random_hf_model(DEEPSEEK, seed=1).save_pretrained(hf_dir)
    (hf_dir / "tokenizer_config.json").write_text("{}")
    assert main(["import-hf", str(hf_dir), str(tmp_path / "ck")], as_program=False) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"wrote {tmp_path / 'ck' / '0'} (deepseek_v3, 3 layers, from {hf_dir}; no tokenizer.json there (beside its "
        "tokenizer_config.json): no tokenizer copied, generate needs --ids)")


def test_export_hf_refuses_an_override_outside_sharding_before_reading_the_checkpoint(tmp_path, capsys):
    assert main(["export-hf", str(tmp_path / "nothing"), str(tmp_path / "out"), "sharding.fsdp=-1", "seed=1"],
                as_program=False) == 2
    assert capsys.readouterr().err == ("r1jax export-hf: error: override 'seed=1': export-hf only takes "
                                       "sharding.KEY=VALUE overrides\n")
    assert not (tmp_path / "out").exists()
