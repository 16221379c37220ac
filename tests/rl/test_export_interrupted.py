"""An export stopped part-way (Ctrl-C, or SIGTERM from a job's time limit or `timeout`) leaves nothing behind and
exits with one line, 128 + the signal: export-hf wrote straight into OUT, leaving a truncated model.safetensors
that the same command then refused to overwrite; export-gguf removed its partial file on an error but not on
SIGTERM, whose default ends the process at once (a hidden 123 MB `.OUT.PID.partial` in a reviewer's run)."""

import os
import signal
import subprocess
import sys
import time

import pytest

from r1jax.files import process_home
from r1jax.model import hf_io
from r1jax.rl import gguf_export
from r1jax.rl.cli.main import main

from tests.rl.conftest import TRAIN_CONFIG


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("ck") / "ck"
    assert main(["init", str(TRAIN_CONFIG), str(root), "model.q_lora_rank=16"]) == 0  # llama.cpp reads one
    tokenizer = root.parent / "tok"
    assert main(["tokenizer", "train", "--input", "arithmetic", "--vocab-size", "300", "--out", str(tokenizer)]) == 0
    return root, tokenizer


def stopped_at_the_third_call(monkeypatch, module, name, stop):
    """`module.name` calls `stop()` on its third call (part-way through the weights)."""
    real, calls = getattr(module, name), []

    def stopping(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            stop()
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, stopping)


def sigterm():
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # the handler raises here
    raise AssertionError("SIGTERM did not stop the export")


def ctrl_c():
    raise KeyboardInterrupt


@pytest.mark.parametrize("stop, code, name", [(ctrl_c, 130, "Ctrl-C"), (sigterm, 143, "SIGTERM")])
def test_a_stopped_export_hf_leaves_no_output_and_the_same_command_runs_again(capsys, checkpoint, tmp_path,
                                                                           monkeypatch, stop, code, name):
    root, tokenizer = checkpoint
    out = tmp_path / "hf"
    before = signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as patch:
        stopped_at_the_third_call(patch, hf_io, "host_slot", stop)
        assert main(["export-hf", str(root), str(out), "--tokenizer", str(tokenizer)]) == code
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"r1jax export-hf: interrupted ({name})"
    assert list(tmp_path.iterdir()) == [] and signal.getsignal(signal.SIGTERM) is before
    assert main(["export-hf", str(root), str(out), "--tokenizer", str(tokenizer)]) == 0
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}


@pytest.mark.parametrize("stop, code", [(ctrl_c, 130), (sigterm, 143)])
def test_a_stopped_export_gguf_leaves_no_partial_file(capsys, checkpoint, tmp_path, monkeypatch, stop, code):
    root, tokenizer = checkpoint
    out = tmp_path / "model.gguf"
    with monkeypatch.context() as patch:
        stopped_at_the_third_call(patch, gguf_export, "tensor_data", stop)
        assert main(["export-gguf", str(root), str(out), "--tokenizer", str(tokenizer)]) == code
    assert "interrupted" in capsys.readouterr().err and list(tmp_path.iterdir()) == []
    assert main(["export-gguf", str(root), str(out), "--tokenizer", str(tokenizer)]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]


def dead_pid() -> int:
    """The pid of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("command, out_name", [("export-hf", "hf"), ("export-gguf", "model.gguf")])
def test_an_export_removes_what_a_killed_export_left_beside_its_output(checkpoint, tmp_path, command, out_name):
    """SIGKILL lets no cleanup run: the killed export's hidden partial output (up to the model's bytes) stayed
    beside OUT for good. The next export to OUT takes it away; a live export's, and another host's, stay."""
    root, tokenizer = checkpoint
    host = process_home()
    killed = tmp_path / f".{out_name}.{host}-{dead_pid()}.partial"
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"\0" * 1000)
    live = tmp_path / f".{out_name}.{host}-{os.getppid()}.partial"
    elsewhere = tmp_path / f".{out_name}.another-host-{dead_pid()}.partial"
    live.write_bytes(b"")
    elsewhere.write_bytes(b"")
    assert main([command, str(root), str(tmp_path / out_name), "--tokenizer", str(tokenizer)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out_name, live.name, elsewhere.name])


@pytest.mark.parametrize("kind", ["symlink", "cwd"])
def test_an_export_hf_into_an_existing_empty_directory_writes_there_and_a_stop_empties_it(
        capsys, checkpoint, tmp_path, monkeypatch, kind):
    """OUT may be an empty directory that cannot be renamed over (a symlink to one, `.`, a mount point): the export
    is written in it (staged beside and renamed, its rmdir failed after the whole export: a traceback), and a
    stopped export leaves it empty."""
    root, tokenizer = checkpoint
    (tmp_path / "empty").mkdir()
    if kind == "symlink":
        (tmp_path / "link").symlink_to("empty")
        out = str(tmp_path / "link")
    else:
        monkeypatch.chdir(tmp_path / "empty")
        out = "."
    with monkeypatch.context() as patch:
        stopped_at_the_third_call(patch, hf_io, "host_slot", sigterm)
        assert main(["export-hf", str(root), out, "--tokenizer", str(tokenizer)]) == 143
    assert list((tmp_path / "empty").iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == (
        ["empty", "link"] if kind == "symlink" else ["empty"])
    assert main(["export-hf", str(root), out, "--tokenizer", str(tokenizer)]) == 0, capsys.readouterr().err
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (tmp_path / "empty").iterdir()}


def test_a_sigterm_while_init_saves_leaves_no_partial_step(capsys, tmp_path, monkeypatch):
    """init, stopped by SIGTERM (a job's time limit) while it saved, ended at once: OUT kept a partial step and
    the same command was refused ('exists and is not empty; refusing to overwrite')."""
    import orbax.checkpoint as ocp

    out, wait = tmp_path / "ck", ocp.CheckpointManager.wait_until_finished

    def stopped(manager):
        wait(manager)
        sigterm()

    with monkeypatch.context() as patch:
        patch.setattr(ocp.CheckpointManager, "wait_until_finished", stopped)
        assert main(["init", str(TRAIN_CONFIG), str(out)]) == 143
    assert capsys.readouterr().err.strip().splitlines()[-1] == "r1jax init: interrupted (SIGTERM)"
    assert not out.exists()
    assert main(["init", str(TRAIN_CONFIG), str(out)]) == 0
