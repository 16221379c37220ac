"""`r1jax export-hf`'s flags reach the export (rl/cli/export_hf.py): --dtype sets every tensor's dtype in the
files, --max-shard-size splits them, read back from the safetensors headers themselves."""

import json
import struct

from r1jax.rl.cli.main import main

SMALL = ["model.num_hidden_layers=2", "model.hidden_size=64", "model.intermediate_size=128",
         "model.moe_intermediate_size=32", "model.vocab_size=300"]


def header(path) -> dict:
    """A safetensors file's JSON header: {name: {"dtype", "shape", "data_offsets"}} (and __metadata__)."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        return {k: v for k, v in json.loads(f.read(size)).items() if k != "__metadata__"}


def test_dtype_and_shard_size_reach_the_files(tmp_path, capsys):
    assert main(["init", "tiny", str(tmp_path / "ck"), *SMALL], as_program=False) == 0  # float32 parameters
    out = tmp_path / "out"
    assert main(["export-hf", str(tmp_path / "ck"), str(out), "--dtype", "bfloat16", "--max-shard-size", "200KB"],
                as_program=False) == 0
    said = capsys.readouterr().out
    files = sorted(out.glob("*.safetensors"))
    assert f"{len(files)} safetensors file(s), dtype bfloat16" in said, said
    headers = {f.name: header(f) for f in files}
    tensors = {name: meta for h in headers.values() for name, meta in h.items()}
    router = ("mlp.gate.weight", "mlp.gate.e_score_correction_bias")  # DeepSeek-V3's router: float32, as transformers
    assert {meta["dtype"] for name, meta in tensors.items() if not name.endswith(router)} == {"BF16"}
    assert {meta["dtype"] for name, meta in tensors.items() if name.endswith(router)} == {"F32"}
    # 200 KB = 200,000 bytes: every file holds at most that, unless one tensor alone is larger
    for h in headers.values():
        sizes = [meta["data_offsets"][1] - meta["data_offsets"][0] for meta in h.values()]
        assert sum(sizes) <= 200_000 or len(sizes) == 1, sizes
    total = sum(meta["data_offsets"][1] - meta["data_offsets"][0] for meta in tensors.values())
    assert len(files) >= total // 200_000 > 1
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors)
    assert {index["weight_map"][n] for n in tensors} == set(headers)
    # the default: the checkpoint's float32, in one file below 5 GB
    assert main(["export-hf", str(tmp_path / "ck"), str(tmp_path / "default")], as_program=False) == 0
    assert "1 safetensors file(s), dtype float32" in capsys.readouterr().out
    (single,) = (tmp_path / "default").glob("*.safetensors")
    assert {meta["dtype"] for meta in header(single).values()} == {"F32"}
    assert set(header(single)) == set(tensors)


def test_a_full_disk_names_the_file_and_leaves_no_export(tmp_path, capsys, monkeypatch):
    """A disk that filled while a safetensors file was written said only "no space left on device" (Python's write
    error names no file); the line names the file, and the partial export is gone."""
    import builtins
    import errno

    assert main(["init", "tiny", str(tmp_path / "ck"), *SMALL], as_program=False) == 0
    real_open = builtins.open

    def full_disk(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if str(file).endswith(".safetensors") and "w" in mode:
            handle.close()
            raise OSError(errno.ENOSPC, "No space left on device")  # as a write's: no file named
        return handle

    monkeypatch.setattr(builtins, "open", full_disk)
    out = tmp_path / "out"
    assert main(["export-hf", str(tmp_path / "ck"), str(out)], as_program=False) == 2
    err = capsys.readouterr().err
    assert "r1jax export-hf: error: no space left on device: " in err and "model.safetensors" in err, err
    # the file as the user knows it: not the hidden staging directory's (.out.HOST-PIDNS-PID.partial), removed now
    assert f"no space left on device: {out / 'model.safetensors'};" in err, err
    assert "Traceback" not in err and not out.exists()


def test_a_template_for_a_checkpoint_without_a_tokenizer_is_refused_before_anything_is_written(tmp_path, capsys):
    """--template writes a chat template into the tokenizer's files; a checkpoint with none (`r1jax init`, an
    import without tokenizer files) wrote the model alone and said "no tokenizer", the asked-for template lost."""
    assert main(["init", "tiny", str(tmp_path / "ck"), *SMALL], as_program=False) == 0  # no tokenizer
    out = tmp_path / "out"
    assert main(["export-hf", str(tmp_path / "ck"), str(out), "--template", "r1_zero"], as_program=False) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "r1jax export-hf: error: --template r1_zero: the checkpoint carries no tokenizer to write a chat "
        "template for; pass --tokenizer DIR, or drop --template"], err
    assert not out.exists()


def test_an_export_inside_the_checkpoint_directory_it_reads_is_refused(tmp_path, capsys):
    """The checkpoint root's entries are steps: an export-hf named 7 there became the latest step (generate and a
    resume then refused the run as incomplete), one in a step went when the step rotated away, and export-gguf
    --force replaced the checkpoint's own tokenizer.model with the GGUF file."""
    ck = tmp_path / "ck"
    assert main(["init", "tiny", str(ck), *SMALL], as_program=False) == 0
    cases = [(["export-hf", str(ck), str(ck / "7")], ck / "7"),
             (["export-hf", str(ck / "0"), str(ck / "0" / "hf")], ck / "0" / "hf"),
             (["export-gguf", str(ck), str(ck / "tokenizer" / "tokenizer.model"), "--force"], None)]
    for argv, made in cases:
        if argv[0] == "export-gguf":  # (export-hf's: no tokenizer, so nothing stops them but the check)
            (ck / "tokenizer").mkdir()
            (ck / "tokenizer" / "tokenizer.model").write_bytes(b"the checkpoint's own")
        assert main(argv, as_program=False) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{argv[2]!r} is inside checkpoint directory {str(ck)!r}" in err[0], err
        assert made is None or not made.exists()
    assert (ck / "tokenizer" / "tokenizer.model").read_bytes() == b"the checkpoint's own"
    assert sorted(p.name for p in ck.iterdir()) == ["0", "tokenizer"]
