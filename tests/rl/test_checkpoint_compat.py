"""rl.train.checkpointing.check_compatible on configs alone: which model fields a checkpoint must share with the
run (parameters' shapes and meaning) and which it may differ in (how the model runs), and the tokenizer settings
a resume must share."""

import dataclasses
import logging

import pytest

from r1jax.errors import UserError
from r1jax.rl.config import config_from_dicts, load_config, stored_config, to_dict
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


def test_a_restart_builds_its_tokenizer_again_when_the_first_stages_init_from_or_the_data_changed(saved):
    """rl.train.trainer keeps a run directory's tokenizer on a restart without a checkpoint only when the
    settings it was built from are the config's: the first stage's init_from (whose tokenizer it carries) and
    the data it was trained on count; a later stage's init_from, or the template, do not."""
    from r1jax.rl.train.checkpointing import tokenizer_settings

    def with_init_from(index, path):
        stages = list(saved.stages)
        stages[index] = dataclasses.replace(stages[index], init_from=path)
        return dataclasses.replace(saved, stages=stages)

    assert tokenizer_settings(with_init_from(0, "/elsewhere")) != tokenizer_settings(saved)
    assert tokenizer_settings(dataclasses.replace(saved, data=dataclasses.replace(saved.data, path="x.jsonl"))) \
        != tokenizer_settings(saved)
    assert tokenizer_settings(with_init_from(len(saved.stages) - 1, "/elsewhere")) == tokenizer_settings(saved)
    template = "chat" if saved.tokenizer.template != "chat" else "r1_zero"
    assert tokenizer_settings(dataclasses.replace(saved, tokenizer=dataclasses.replace(
        saved.tokenizer, template=template))) == tokenizer_settings(saved)


def test_config_changes_name_a_list_of_values_whole_and_each_setting_of_an_added_stage(saved):
    from r1jax.rl.train.checkpointing import config_changes

    fewer = load_config("tiny", ["rewards.names=[accuracy]", "rewards.weights=[1.0]", "stages.1.steps=7"])
    assert config_changes(saved, fewer) == ["rewards.names: ('accuracy', 'format') -> ('accuracy',)",
                                            "rewards.weights: (1.0, 1.0) -> (1.0,)", "stages.1.steps: 100 -> 7"]
    one_stage = load_config("tiny", ["stages=[{name: sft, kind: sft, steps: 600, lr: 0.002}]"])
    added = config_changes(one_stage, saved)
    # every setting of the added stage, an unset (None) one included, and no stage of both configs
    assert {"stages.1.lr: absent -> None", "stages.1.teacher: absent -> None", "stages.1.steps: absent -> 100",
            "stages.1.kind: absent -> 'grpo'"} <= set(added)
    assert not [line for line in added if not line.startswith("stages.1.")], added


@pytest.mark.parametrize("template", ["r1_zero", "none"])
def test_a_stored_config_with_variables_no_template_reads_still_loads_without_them(saved, template, caplog):
    """Before 2026-12-06 tokenizer.template_vars beside r1_zero / none were accepted and ignored; the config now
    refuses them, and an override cannot remove them (overrides merge): a checkpoint's stored config drops them
    with a warning, so that it still resumes, evaluates and exports. Beside chat they stay."""
    stored = to_dict(saved)
    stored["tokenizer"] = {**stored["tokenizer"], "template": template, "template_vars": {"enable_thinking": False}}
    with pytest.raises(UserError, match="tokenizer.template_vars"):
        config_from_dicts(stored)
    with caplog.at_level(logging.WARNING):
        config = stored_config(stored, source="checkpoint ck/4 config")
    assert config.tokenizer.template == template and config.tokenizer.template_vars == {}
    assert "checkpoint ck/4 config: tokenizer.template_vars ['enable_thinking'] are dropped" in caplog.text
    assert stored["tokenizer"]["template_vars"] == {"enable_thinking": False}  # the caller's dict is left as it was
    stored["tokenizer"]["template"] = "chat"
    assert stored_config(stored, source="ck").tokenizer.template_vars == {"enable_thinking": False}
