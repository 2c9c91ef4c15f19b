"""progress.py: the loss plot and the progress line (fed the points a trainer's log gives)."""

from __future__ import annotations

import json

from PIL import Image

from paddle_ocrvl_sft import progress


def points(lrs):
    return [{"step": i + 1, "loss": 3.0 - 0.1 * i, "lr": lr} for i, lr in enumerate(lrs)]


def legend(fig) -> list[str]:
    return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def plotted(points_, tmp_path, monkeypatch, max_steps):
    """plot_loss's figure as it is saved, and the description in the PNG."""
    from matplotlib.figure import Figure

    saved = []
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (saved.append(self), original(self, *a, **k))[1])
    out = progress.plot_loss(points_, tmp_path / "loss.png", max_steps)
    return saved[0], json.loads(Image.open(out).text["Description"])


def test_a_constant_learning_rate_is_named_not_drawn(tmp_path, monkeypatch):
    fig, described = plotted(points([5e-3] * 20), tmp_path, monkeypatch, 20)
    assert len(fig.axes) == 1 and legend(fig) == ["loss"]  # no second axis with a 0.0048-0.0052 scale around a flat line
    assert "learning rate 0.005, constant" in fig.axes[0].get_title()
    assert described["lr"] == "constant"


def test_a_changing_learning_rate_is_drawn_labelled_and_in_the_legend(tmp_path, monkeypatch):
    fig, described = plotted(points([1e-3, 5e-3, 4e-3, 3e-3, 2e-3]), tmp_path, monkeypatch, 5)
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "learning rate"
    assert legend(fig) == ["loss", "learning rate"]
    assert described == {"steps": 5, "first_step": 1, "last_step": 5, "non_finite": 0, "lr": "drawn"}


def test_a_nominal_rate_is_labelled_as_such(tmp_path):
    lines = []
    bar = progress.Progress(tmp_path, 10, bar=False, echo=lines.append)
    bar.update({"step": 1, "loss": 2.0, "lr": 1e-5, "nominal_tokens_per_second": 1208.7})
    bar.update({"step": 2, "loss": 1.9, "lr": 1e-5, "tokens_per_second": 300.0})
    bar.close()
    assert "1209 tok/s nominal" in lines[0] and "300 tok/s" in lines[1] and "nominal" not in lines[1]
