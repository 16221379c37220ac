"""rl.train.checkpointing.check_compatible on configs alone: which model fields a checkpoint must share with the
run (parameters' shapes and meaning) and which it may differ in (how the model runs), and the tokenizer settings
a resume must share."""

import dataclasses

import pytest

from r1jax.errors import UserError
from r1jax.rl.config import load_config
from r1jax.rl.train.checkpointing import _RUNTIME_FIELDS, check_compatible


@pytest.fixture(scope="module")
def saved():
    return load_config("tiny")


def with_model(config, **changes):
    return dataclasses.replace(config, model=dataclasses.replace(config.model, **changes))


def test_how_the_model_runs_may_differ_from_the_checkpoint(saved):
    fields = {f.name: f for f in dataclasses.fields(saved.model)}
    assert {"remat", "compute_dtype", "scan_layers"} <= _RUNTIME_FIELDS <= set(fields)
    other = with_model(saved, remat=not saved.model.remat, scan_layers=not saved.model.scan_layers,
                       compute_dtype="float32" if saved.model.compute_dtype != "float32" else "bfloat16")
    for same_tokenizer in (False, True):
        check_compatible(saved, other, "ck", same_tokenizer=same_tokenizer)


def test_the_architecture_must_match_also_on_resume(saved):
    wider = with_model(saved, hidden_size=saved.model.hidden_size * 2)
    for same_tokenizer in (False, True):
        with pytest.raises(UserError, match=f"checkpoint ck does not match the config: model.hidden_size: "
                                            f"checkpoint {saved.model.hidden_size} vs config "
                                            f"{saved.model.hidden_size * 2}$"):
            check_compatible(saved, wider, "ck", same_tokenizer=same_tokenizer)


def test_the_tokenizer_settings_must_match_only_on_resume(saved):
    other = dataclasses.replace(saved, tokenizer=dataclasses.replace(saved.tokenizer,
                                                                     vocab_size=saved.tokenizer.vocab_size - 1))
    check_compatible(saved, other, "ck")  # init_from: the checkpoint's tokenizer is checked by its files
    with pytest.raises(UserError, match=r"tokenizer.vocab_size: checkpoint \d+ vs config \d+ \(the run keeps"):
        check_compatible(saved, other, "ck", same_tokenizer=True)
