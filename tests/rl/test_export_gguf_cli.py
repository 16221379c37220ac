"""`r1jax export-gguf`'s command (rl/cli/export_gguf.py): the chat template in the file renders the prompt format
the checkpoint was trained with (its tokenizer.template, not always chat); overrides other than sharding.* are
refused naming the first; sharding overrides reach the loading mesh; a tokenizer.json goes into the file through the
tokenizer.model beside it only when it is r1jax's conversion of that model."""

import dataclasses

import ml_dtypes
import numpy as np
import pytest

from r1jax.model.hf_tokenizer import chat_template
from r1jax.rl.checkpoint import load_config
from r1jax.rl.cli.main import main
from tests.rl.test_export_gguf import CONFIGS, read, save_checkpoint, tokenizer  # noqa: F401 (a fixture)


def test_the_files_chat_template_is_the_checkpoints_prompt_format(tokenizer, tmp_path, capsys):  # noqa: F811
    save_checkpoint(tmp_path / "ck", CONFIGS["qwen3_moe"], tokenizer, template="r1_zero")
    assert load_config(tmp_path / "ck").tokenizer.template == "r1_zero"
    assert main(["export-gguf", str(tmp_path / "ck"), str(tmp_path / "m.gguf")], as_program=False) == 0
    assert read(tmp_path / "m.gguf")[0]["tokenizer.chat_template"] == chat_template("r1_zero")
    assert chat_template("r1_zero") != chat_template("chat")


def test_a_dangling_symlink_as_output_is_refused_up_front_naming_its_target(tmp_path, capsys):
    """export-gguf replaced a link to nothing with the file (export-hf and init refuse it: rl.cli.common)."""
    out = tmp_path / "m.gguf"
    out.symlink_to(tmp_path / "models" / "m.gguf")
    assert main(["export-gguf", str(tmp_path / "no-checkpoint"), str(out)], as_program=False) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"output {str(out)!r} is a symlink to {str(tmp_path / 'models' / 'm.gguf')!r}, which does not exist; " \
           "give a new file name, or remove the link" in err, err
    assert out.is_symlink()


def test_only_sharding_overrides_are_taken(tokenizer, tmp_path, capsys):  # noqa: F811
    save_checkpoint(tmp_path / "ck", CONFIGS["qwen3_moe"], tokenizer)
    out = tmp_path / "m.gguf"
    argv = ["export-gguf", str(tmp_path / "ck"), str(out), "sharding.fsdp=2", "model.hidden_size=8", "seed=1"]
    assert main(argv, as_program=False) == 2
    err = capsys.readouterr().err
    assert "r1jax export-gguf: error: override 'model.hidden_size=8': export-gguf only takes sharding.KEY=VALUE " \
           "overrides" in err, err
    assert not out.exists()
    # a sharding override reaches the loading mesh: data=3 does not divide 8 devices, and the loader says so
    assert main(["export-gguf", str(tmp_path / "ck"), str(out), "sharding.data=3"], as_program=False) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "the fixed mesh axes (data=3, fsdp=-1, expert=1, tensor=1) multiply to 3, which does not divide" in err
    assert out.exists()


def test_a_model_llama_cpp_cannot_run_is_refused_without_loading_its_weights(tokenizer, tmp_path, capsys,  # noqa: F811
                                                                             monkeypatch):
    from r1jax.rl import checkpoint

    save_checkpoint(tmp_path / "ck", dataclasses.replace(CONFIGS["qwen3_moe"], norm_topk_prob=False), tokenizer)
    monkeypatch.setattr(checkpoint, "load_policy", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("the weights were loaded before the refusal")))
    assert main(["export-gguf", str(tmp_path / "ck"), str(tmp_path / "m.gguf")], as_program=False) == 2
    err = capsys.readouterr().err
    assert "this qwen3_moe model cannot run in llama.cpp as" in err and "norm_topk_prob=false" in err, err


def test_tokenizer_puts_that_tokenizer_in_the_file(tokenizer, tmp_path, capsys):  # noqa: F811
    """A checkpoint without a tokenizer exports with --tokenizer's (it was refused only without one)."""
    from r1jax.model.factory import init_policy
    from r1jax.rl.checkpoint import save_policy
    from r1jax.rl.config import load_config as load_run_config
    from tests.rl.conftest import TRAIN_CONFIG

    cfg = CONFIGS["qwen3_moe"]
    save_policy(tmp_path / "ck", dataclasses.replace(load_run_config(TRAIN_CONFIG), model=cfg), init_policy(cfg, 0))
    tokenizer.save(tmp_path / "tok")
    out = tmp_path / "m.gguf"
    assert main(["export-gguf", str(tmp_path / "ck"), str(out), "--tokenizer", str(tmp_path / "tok")],
                as_program=False) == 0
    fields = read(out)[0]
    assert fields["tokenizer.ggml.model"] == "llama"  # llama.cpp's SPM: a sentencepiece model
    tokens = list(fields["tokenizer.ggml.tokens"])  # its 300 pieces, then padding to the model's 320 rows
    assert tokens[:tokenizer.vocab_size] == [tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)]
    assert tokens[tokenizer.vocab_size:] == [f"[PAD{i}]" for i in range(tokenizer.vocab_size, cfg.vocab_size)]


def test_a_disk_that_fills_during_the_tensors_names_the_file_and_leaves_none(tokenizer, tmp_path, capsys):  # noqa: F811
    """numpy's `tofile` (the gguf writer's) on a full disk raised an errno-less OSError ("2048 requested and 632
    written"): a traceback. The file limit (RLIMIT_FSIZE: EFBIG, as ENOSPC a short write, and no root needed for
    a small tmpfs) falls inside the tensor data; the line names OUT and nothing is left beside it."""
    import resource
    import signal

    import gguf

    save_checkpoint(tmp_path / "ck", CONFIGS["qwen3_moe"], tokenizer)
    (tmp_path / "whole").mkdir()
    (tmp_path / "cut").mkdir()
    assert main(["export-gguf", str(tmp_path / "ck"), str(tmp_path / "whole" / "m.gguf")], as_program=False) == 0
    header = gguf.GGUFReader(tmp_path / "whole" / "m.gguf").data_offset  # the same for the same file name
    out = tmp_path / "cut" / "m.gguf"
    limits, handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (header + 1000, limits[1]))
    try:
        code = main(["export-gguf", str(tmp_path / "ck"), str(out)], as_program=False)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    err = capsys.readouterr().err
    assert code == 2 and f"r1jax export-gguf: error: file too large: {out};" in err, err
    assert "Traceback" not in err and list((tmp_path / "cut").iterdir()) == []


@pytest.mark.parametrize("array", [np.zeros((0, 4), np.float32), np.arange(6, dtype=np.float32).reshape(2, 3).T,
                                   np.arange(4, dtype=">f4"), np.ones((2, 2), ml_dtypes.bfloat16),
                                   np.arange(12, dtype=np.uint8).reshape(3, 4)[:, ::2]])
def test_tensor_data_goes_through_the_file_object_byte_for_byte(array):
    """The GGUF writer's `tofile` through the file object: an empty array or a bfloat16 one failed
    (memoryview.cast refuses both); every layout writes numpy's own bytes."""
    import io

    from r1jax.rl.gguf_export import _FileWrite

    written = io.BytesIO()
    array.view(_FileWrite).tofile(written)
    assert written.getvalue() == array.tobytes()


def test_a_tokenizer_json_exports_through_its_tokenizer_model_only_if_made_from_it(tokenizer, tmp_path):  # noqa: F811
    """export-hf's files (tokenizer.json, and tokenizer.model since) export as llama.cpp's SPM tokenizer, the
    path test_export_gguf_llama.py runs end to end; a stray r1jax model beside Qwen's tokenizer.json leaves it
    a byte-level BPE; without the model, or with a tokenizer.json edited since, the refusal names the model."""
    import json

    from r1jax.errors import UserError
    from r1jax.model.factory import init_policy
    from r1jax.model.hf_tokenizer import save_hf_tokenizer
    from r1jax.model.tokenizer import HFTokenizer
    from r1jax.rl.gguf_export import export_gguf
    from tests.model.hf_tokenizer_files import write_hf_tokenizer

    policy = init_policy(dataclasses.replace(CONFIGS["qwen3_moe"], vocab_size=640), 0)  # Qwen's tokens fit
    save_hf_tokenizer(tokenizer, tmp_path / "hf", "r1_zero")
    exported = HFTokenizer.load(tmp_path / "hf")

    def model(tok):
        export_gguf(policy, tmp_path / "m.gguf", tok, "f32", force=True)
        return read(tmp_path / "m.gguf")[0]["tokenizer.ggml.model"]

    assert model(exported) == "llama"
    qwen = write_hf_tokenizer(tmp_path / "qwen", "qwen")
    tokenizer.save(qwen)
    assert model(HFTokenizer.load(qwen)) == "gpt2"
    edited = json.loads(exported.files["tokenizer.json"])
    edited["added_tokens"].append({**edited["added_tokens"][-1], "id": 300, "content": "<tool>"})
    for files, why in (({**exported.files, "tokenizer.json": json.dumps(edited).encode()}, "is not the one it was "
                        "written from"), ({k: v for k, v in exported.files.items() if k != "tokenizer.model"},
                                          "is missing")):
        with pytest.raises(UserError, match=f"a BPE model without a ByteLevel pre-tokenizer; .* the sentencepiece "
                                            f"tokenizer.model that export-hf writes beside it, which {why} there"):
            model(HFTokenizer(files, str(tmp_path / "edited")))
