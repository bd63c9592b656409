"""Quiet model loading (one alignlab line instead of transformers' load report) and progress bars."""

from test_train_stages import tiny_model  # noqa: F401

from alignlab import progress as P
from alignlab.config import ModelSettings
from alignlab.models.loading import load_causal_lm, load_reward_model


def test_new_score_head_is_one_alignlab_line(tiny_model, capfd):  # noqa: F811
    load_reward_model(ModelSettings(path=tiny_model))
    out, err = capfd.readouterr()
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert lines == [f"alignlab: reward model from {tiny_model}: newly initialised score.weight "
                     "(32 parameters)"]
    load_causal_lm(ModelSettings(path=tiny_model))
    out, err = capfd.readouterr()
    assert (out + err).strip() == ""  # nothing new, no loading bars, no report table


def test_progress_bars_only_on_a_terminal_or_when_forced(monkeypatch):
    monkeypatch.delenv("ALIGNLAB_PROGRESS", raising=False)
    monkeypatch.setattr(P.sys.stdout, "isatty", lambda: False, raising=False)
    assert not P.bars_enabled()
    with P.progress(5, "x") as bar:
        assert isinstance(bar, P._Silent)
    monkeypatch.setenv("ALIGNLAB_PROGRESS", "1")
    with P.progress(5, "training") as bar:
        bar.advance(2)
        bar.advance(3)
        task = bar.progress.tasks[0]
        assert (task.description, task.total, task.completed) == ("training", 5, 5)
    monkeypatch.setenv("ALIGNLAB_PROGRESS", "0")
    assert not P.bars_enabled()
