"""Training plots: the accuracy figure carries every held-out evaluation, end-of-stage ones included."""

import pytest

from r1jax.rl.train.plots import _mark_stages, _series, write_plots

ROWS = [{"global_step": 1, "stage": "sft", "sft/loss": 2.0},
        {"global_step": 2, "stage": "sft", "sft/loss": 1.5},
        {"global_step": 3, "stage": "grpo", "reward/accuracy": 0.25, "loss": 0.1},
        {"global_step": 4, "stage": "grpo", "reward/accuracy": 0.5, "loss": 0.2, "eval/pass@1": 0.4}]
EVALS = [{"stage": "sft", "step": 2, "pass@1": 0.3}, {"stage": "grpo", "step": 4, "pass@1": 0.4},
         {"stage": "grpo", "step": 5, "pass@1": 0.6}]


def test_eval_series_come_from_the_evaluations_and_others_from_the_rows():
    assert _series("eval/pass@1", ROWS, EVALS) == [(2, 0.3), (4, 0.4), (5, 0.6)]
    assert _series("eval/pass@1", ROWS, None) == [(4, 0.4)]  # without evaluations: the rows' periodic ones
    assert _series("reward/accuracy", ROWS, EVALS) == [(3, 0.25), (4, 0.5)]


def test_write_plots_draws_the_evaluations_even_before_any_grpo_row(tmp_path):
    written = {p.name for p in write_plots(ROWS[:2], tmp_path, EVALS[:1])}  # right after SFT's evaluation
    assert written == {"accuracy.png", "loss.png"}
    assert all((tmp_path / name).stat().st_size > 0 for name in written)


def test_a_writer_without_evaluations_plots_the_rows_own(tmp_path):
    from r1jax.rl.train.metrics import MetricsWriter

    writer = MetricsWriter(tmp_path, plot_every=1000)
    for row in ROWS:
        writer.write(row)
    assert writer.evals() is None
    writer.close()
    assert (tmp_path / "plots" / "accuracy.png").exists()


def test_plots_are_redrawn_at_most_once_an_interval_and_always_at_close(tmp_path):
    from r1jax.rl.train.metrics import MetricsWriter

    for name in ("throttled", "eager"):
        (tmp_path / name).mkdir()
    throttled = MetricsWriter(tmp_path / "throttled", plot_every=1, plot_interval_s=3600)
    for row in ROWS:
        throttled.write(row)
    throttled.log_eval({**EVALS[0], "k": 2})
    assert not (tmp_path / "throttled" / "plots").exists()  # within the interval: nothing drawn yet
    throttled.close()
    assert (tmp_path / "throttled" / "plots" / "accuracy.png").exists()

    eager = MetricsWriter(tmp_path / "eager", plot_every=1, plot_interval_s=0)
    eager.write(ROWS[0])
    assert (tmp_path / "eager" / "plots" / "loss.png").exists()  # the interval passed: drawn with the row


def test_a_kl_term_gets_its_figure(tmp_path):
    rows = [{**row, "kl": 0.01 * row["global_step"]} if row["stage"] == "grpo" else row for row in ROWS]
    written = {p.name for p in write_plots(rows, tmp_path, EVALS)}
    assert "kl.png" in written and "kl.png" not in {p.name for p in write_plots(ROWS, tmp_path / "none", EVALS)}


class Killed(BaseException):
    """The process killed mid-draw (a BaseException, as a signal's exit is: no handler catches it)."""


def test_a_draw_killed_mid_write_keeps_the_last_complete_plot(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    write_plots(ROWS, tmp_path, EVALS)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def savefig(self, target, **options):  # matplotlib writes a PNG in pieces: the first, then the kill
        if hasattr(target, "write"):
            target.write(b"\x89PNG\r\n")
        else:
            with open(target, "wb") as f:
                f.write(b"\x89PNG\r\n")
        raise Killed

    monkeypatch.setattr(Figure, "savefig", savefig)
    with pytest.raises(Killed):
        write_plots(ROWS, tmp_path, EVALS)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no cut PNG, no temporary file left


class FakeAx:
    def __init__(self):
        self.lines = []

    def axvline(self, x, **style):
        self.lines.append(x)


def test_none_values_are_no_points():
    rows = [{"global_step": 1, "loss": None}, {"global_step": 2, "loss": 0.5}, {"global_step": 3}]
    assert _series("loss", rows, None) == [(2, 0.5)]
    evals = [{"step": 2, "pass@1": None}, {"step": 4, "pass@1": 0.75}, {"step": 5}]
    assert _series("eval/pass@1", rows, evals) == [(4, 0.75)]


def test_each_stage_change_is_marked_at_the_new_stages_first_step():
    rows = [{"global_step": 1, "stage": "sft"}, {"global_step": 2, "stage": "sft"},
            {"global_step": 3, "stage": "grpo"}, {"global_step": 4, "stage": "grpo"},
            {"global_step": 5, "stage": "rejection"}, {"global_step": 6, "stage": "grpo"}]
    ax = FakeAx()
    _mark_stages(ax, rows)
    assert ax.lines == [3, 5, 6]
    one = FakeAx()
    _mark_stages(one, rows[:2])
    assert one.lines == []
