"""checkpoint.keep_best: each step's evaluation score is written beside it (Orbax's `metrics` item) and read back when
a resumed run opens the directory, so the best step outlives a resume; a score file that is not JSON is named."""

import shutil

import numpy as np
import pytest

from r1jax.errors import UserError
from r1jax.rl.config import load_config as load_run_config
from r1jax.rl.train.checkpointing import TrainCheckpointer

from tests.rl.conftest import TRAIN_CONFIG


def test_the_best_step_outlives_a_resume(tmp_path):
    """checkpoint.keep 2 and keep_best 1: step 1 (pass@1 0.9, the best) stays through two later saves, also when
    the directory is reopened between them as a resumed run opens it: its score is read back from disk (it was
    kept in memory only, so after a resume the latest two steps alone stayed)."""
    config = load_run_config(TRAIN_CONFIG)
    kept = []
    for reopen in (False, True):
        root = tmp_path / f"reopen-{reopen}"
        checkpointer = TrainCheckpointer(root, keep=2, keep_best=1, async_save=False)
        for step, score in ((1, 0.9), (2, 0.1), (3, None), (4, None)):
            if step == 3 and reopen:
                checkpointer.close()
                checkpointer = TrainCheckpointer(root, keep=2, keep_best=1, async_save=False)
            checkpointer.save(step, config, {"params": {"w": np.zeros(2, np.float32)}}, {"global_step": step},
                              None if score is None else {"eval/pass@1": score})
        kept.append(sorted(checkpointer.manager.all_steps()))
        checkpointer.close()
    assert kept == [[1, 3, 4], [1, 3, 4]]


def test_a_step_whose_score_is_not_json_is_named_when_a_run_opens_its_checkpoints(tmp_path):
    """Orbax reads back every step's score as the directory opens: one damaged file stopped a resume (and a finished
    run's `r1jax train --run-dir`) with json's JSONDecodeError traceback. It is named, with what to do; done that
    way (its directory removed) the run opens."""
    config, root = load_run_config(TRAIN_CONFIG), tmp_path / "checkpoints"
    checkpointer = TrainCheckpointer(root, keep=3, keep_best=1, async_save=False)
    for step, score in ((1, 0.5), (2, 0.25)):
        checkpointer.save(step, config, {"params": {"w": np.zeros(2, np.float32)}}, {"global_step": step},
                          {"eval/pass@1": score})
    checkpointer.close()
    damaged = root / "1" / "metrics" / "metrics"
    damaged.write_text('{"eval/pass@1": 0.5')  # cut short
    with pytest.raises(UserError) as info:
        TrainCheckpointer(root, keep=3, keep_best=1, async_save=False)
    message = str(info.value)
    assert message.startswith(f"checkpoint metrics {damaged} is not JSON") and f"delete {damaged.parent} " in message
    shutil.rmtree(damaged.parent)
    checkpointer = TrainCheckpointer(root, keep=3, keep_best=1, async_save=False)
    assert sorted(checkpointer.manager.all_steps()) == [1, 2]
    checkpointer.close()
