"""The plots of a result: IE per layer at the headline variant with every other variant of the grid."""

from __future__ import annotations

import pytest

from ie_flow import plots
from ie_flow.emergence import emergence_by_variant


def _rows(beta: float, last: list[float]) -> list[dict]:
    rows = []
    for layer, bits in enumerate(last):
        for pos, b in ((0, 1.0), (1, bits)):
            for level in ("macro", "micro"):
                rows.append({"layer": layer, "position": pos, "level": level, "method": "smoothed", "seed": 0,
                             "bits": b, "ceiling_bits": float("inf"), "saturated": False, "n_train": 100,
                             "n_eval": 100, "variant": f"β = {beta:g}", "valid": True, "invalid_reason": None,
                             "replicates": []})
    return rows


def test_ie_per_layer_shows_every_beta_of_the_grid_with_the_headline_bold(tmp_path, monkeypatch):
    table = _rows(0.4, [5.0, 7.0, 6.0]) + _rows(0.6, [3.0, 4.0, 3.5]) + _rows(0.8, [2.0, 2.5, 2.2])
    variants = emergence_by_variant(table)
    drawn = {}
    save = plots._save

    def keep_lines(plt, fig, path):
        ax = fig.axes[0]
        if path.name in ("mi_heatmap.png", "token_curves.png"):  # only the IE plots are read
            return save(plt, fig, path)
        drawn["legend"] = [t.get_text() for t in ax.get_legend().get_texts()]
        drawn["lines"] = {l.get_label(): (l.get_linewidth(), list(map(float, l.get_ydata()))) for l in ax.get_lines()}
        return save(plt, fig, path)

    monkeypatch.setattr(plots, "_save", keep_lines)
    paths = plots.write_plots(variants["β = 0.6"], "m on c", tmp_path, variants=variants)
    png = tmp_path / "ie_per_layer.png"
    assert png in paths and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    # the legend names the three β, the headline's as such
    assert [t for t in drawn["legend"] if "β" in t] == ["β = 0.4", "β = 0.8", "IE at β = 0.6 (headline)"]
    lines = drawn["lines"]
    # IE = (M(1) - M(0)) / 2 per layer at each β; the headline drawn thicker than the others
    assert lines["IE at β = 0.6 (headline)"][1] == pytest.approx([1.0, 1.5, 1.25])
    assert lines["β = 0.4"][1] == pytest.approx([2.0, 3.0, 2.5])
    assert lines["IE at β = 0.6 (headline)"][0] > max(lines["β = 0.4"][0], lines["β = 0.8"][0])
    # one variant only (an estimator without a grid): the plot as before, one IE line
    plots.plot_ie_per_layer(variants["β = 0.6"], tmp_path / "single.png", "t")
    assert [t for t in drawn["legend"] if t.startswith("IE") or "β" in t] == ["IE"]


def test_ie_per_layer_draws_the_companion_beside_the_headline(tmp_path, monkeypatch):
    """Both modes measured: the standardised profile at the headline β is drawn beside the headline,
    named as such, with its values; the other variants of both modes thin."""
    from ie_flow.emergence import headline
    from ie_flow.estimators import get_estimator

    table = _rows(0.6, [3.0, 4.0, 3.5]) + _rows(0.8, [2.0, 2.5, 2.2])
    table += [{**r, "variant": r["variant"] + ", standardised", "bits": r["bits"] / 2} for r in table]
    _, _, (em,) = headline(get_estimator("smoothed", betas=[0.6, 0.8], headline_beta=0.6), "mean", table)
    drawn = {}
    monkeypatch.setattr(plots, "_save", lambda plt, fig, path: drawn.update(
        {l.get_label(): list(map(float, l.get_ydata())) for l in fig.axes[0].get_lines()}) or plt.close(fig) or path)
    plots.plot_ie_per_layer(em, tmp_path / "ie.png", "t", emergence_by_variant(table))
    assert drawn["IE at β = 0.6, standardised (beside it)"] == pytest.approx([0.5, 0.75, 0.625])  # halved values
    assert drawn["IE at β = 0.6 (headline)"] == pytest.approx([1.0, 1.5, 1.25])
    assert {"β = 0.8", "β = 0.8, standardised"} <= set(drawn)
