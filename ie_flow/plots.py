"""PNG plots of a result: IE per layer with its interval, the M_l(t) heatmap, E_l(t) curves, the
control comparison, and a target measure's U_l(t) for a model and its control with the exact ceilings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on workers or CI
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)  # figures are kept alive by pyplot until closed
    return path


def plot_ie_per_layer(em: Any, path: Path, title: str, variants: dict[str, Any] | None = None) -> Path:
    """IE per layer at the headline `em` with its interval, and the companion shown beside it (the smoothed
    measure's standardised mode) with its own; with `variants` (variant -> Emergence: the smoothed
    measure's β grid in both modes) every other variant too, thinner, so the whole grid is in view."""
    plt = _pyplot()
    layers = [l.layer for l in em.layers]
    ie = np.array([l.ie for l in em.layers])
    fig, ax = plt.subplots(figsize=(7, 4))
    beside = em.companion.variant if em.companion is not None else None
    others = {v: p for v, p in (variants or {}).items() if v not in (em.variant, beside)}
    for v, other in others.items():  # a layer invalid at a variant is a gap in its line
        ax.plot([l.layer for l in other.layers], [l.ie for l in other.layers], lw=0.9, alpha=0.7, marker=".", label=v)
    if beside:
        ax.plot(layers, [l.companion_ie for l in em.layers], marker="s", lw=1.5, label=f"IE at {beside} (beside it)")
        ax.fill_between(layers, [l.companion_ie_ci_low for l in em.layers], [l.companion_ie_ci_high for l in em.layers],
                        alpha=0.15)
    ax.plot(layers, ie, marker="o", lw=2.2 if others else 1.5,
            label=f"IE at {em.variant} (headline)" if others else "IE")
    ax.fill_between(layers, [l.ie_ci_low for l in em.layers], [l.ie_ci_high for l in em.layers], alpha=0.25,
                    label=f"95% interval (bootstrap over sequences; {len(em.seeds)} seed(s))")
    if em.has_reference:  # the smoothed measure: how much of IE the covariances alone give
        ax.plot(layers, [l.reference_ie for l in em.layers], marker=".", ls="--", label="IE of the Gaussian reference")
        ax.fill_between(layers, [l.reference_ie_ci_low for l in em.layers], [l.reference_ie_ci_high for l in em.layers],
                        alpha=0.15)
    sat = [l.layer for l in em.layers if l.saturated]
    if sat:
        ax.scatter(sat, [em.layers[layers.index(s)].ie for s in sat], marker="x", color="red", zorder=3,
                   label="an estimate at its ceiling")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(xlabel="layer", ylabel="IE (bits)", title=title)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_mi_heatmap(em: Any, path: Path, title: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    im = ax.imshow(em.macro, aspect="auto", origin="lower", cmap="viridis")
    rows, cols = np.nonzero(em.saturated)
    ax.scatter(cols, rows, marker="x", color="red", s=12, label="saturated (lower bound)")
    fig.colorbar(im, ax=ax, label="M_l(t) bits")
    ax.set(xlabel="position t", ylabel="layer l", title=title)
    if len(rows):
        ax.legend(fontsize=8, loc="upper right")
    return _save(plt, fig, path)


def plot_token_curves(em: Any, path: Path, title: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    cmap = plt.get_cmap("viridis")
    n = len(em.layers)
    for i, layer in enumerate(em.layers):
        ax.plot(em.token_curves[i], color=cmap(i / max(1, n - 1)), lw=1, label=f"l={layer.layer}" if n <= 8 else None)
    ax.set(xlabel="position t", ylabel="E_l(t) bits", title=title)
    if n <= 8:
        ax.legend(fontsize=7)
    return _save(plt, fig, path)


def plot_compare(profiles: dict[str, Any], path: Path, title: str = "IE per layer") -> Path:
    """Several models / corpora on one plot: IE per layer with intervals."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    any_saturated = False
    for label, em in profiles.items():
        layers = [l.layer for l in em.layers]
        (line,) = ax.plot(layers, [l.ie for l in em.layers], marker="o", ms=3, label=label)
        ax.fill_between(layers, [l.ie_ci_low for l in em.layers], [l.ie_ci_high for l in em.layers], alpha=0.2)
        sat = [l for l in em.layers if l.saturated]
        if sat:  # a ring around layers whose IE is a difference of lower bounds
            any_saturated = True
            ax.plot([l.layer for l in sat], [l.ie for l in sat], ls="none", marker="o", ms=8, mfc="none",
                    mec=line.get_color(), mew=0.8)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(xlabel="layer", ylabel="IE (bits)", title=title + (" (ringed: saturated estimates)" if any_saturated else ""))
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_control(control: Any, path: Path, title: str) -> Path:
    """IE of the model and of its control at the headline β, and their difference with its interval, and
    at the companion variant beside it (from a results.ControlRecord)."""
    plt = _pyplot()
    rows = control.layers
    layers = [r.layer for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    top.plot(layers, [r.model_ie for r in rows], marker="o", ms=3, label="model")
    top.plot(layers, [r.control_ie for r in rows], marker="o", ms=3, label=f"{control.kind} control")
    top.set(ylabel="IE (bits)", title=f"{title}: {control.estimator}"
            + (f", {control.variant}" if control.variant else ""))
    top.legend(fontsize=8)
    bottom.plot(layers, [r.diff for r in rows], marker="o", ms=3, color="black", label="model - control")
    bottom.fill_between(layers, [r.ci_low for r in rows], [r.ci_high for r in rows], alpha=0.25,
                        label="95% bootstrap interval")
    if any(r.reference_diff == r.reference_diff for r in rows):  # its Gaussian part and the excess
        bottom.plot(layers, [r.reference_diff for r in rows], marker=".", ls="--", label="of it: Gaussian reference")
        bottom.fill_between(layers, [r.reference_ci_low for r in rows], [r.reference_ci_high for r in rows], alpha=0.15)
        bottom.plot(layers, [r.excess_diff for r in rows], marker=".", ls=":", label="of it: excess")
    if control.companion_variant:  # the difference at the variant beside the headline
        bottom.plot(layers, [r.companion_diff for r in rows], marker="s", ms=3, label=f"at {control.companion_variant}")
        bottom.fill_between(layers, [r.companion_ci_low for r in rows], [r.companion_ci_high for r in rows], alpha=0.15)
    bottom.axhline(0, color="grey", lw=0.5)
    bottom.set(xlabel="layer", ylabel="difference (bits)")
    bottom.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_target(target: Any, kind: str, path: Path, title: str) -> Path:
    """A target measure's U at every boundary, one line per position, the model solid and its control
    dashed, each position's exact ceiling dotted in the same colour (from a results.TargetRecord)."""
    plt = _pyplot()
    model, control = np.array(target.model_grid, dtype=float), np.array(target.control_grid, dtype=float)
    boundaries = [r.boundary for r in target.boundaries]
    fig, ax = plt.subplots(figsize=(8, 5))
    cmap = plt.get_cmap("viridis")
    for j, t in enumerate(target.positions):
        colour = cmap(j / max(1, len(target.positions) - 1))
        ax.plot(boundaries, model[:, j], color=colour, lw=1.2, label=f"t={t}")
        ax.plot(boundaries, control[:, j], color=colour, lw=1, ls="--")
        if np.isfinite(target.ceilings[j]):
            ax.axhline(target.ceilings[j], color=colour, lw=0.8, ls=":")
    if target.emergence_boundary is not None:
        ax.axvline(target.emergence_boundary, color="red", lw=0.8, label="emergence layer")
    ax.set(xlabel="boundary (0: embeddings; l + 1: block l's output)", ylabel="usable information U (bits)",
           title=f"{title}\nsolid: model, dashed: {kind} control, dotted: exact I(s; prefix_t)")
    ax.legend(fontsize=7, ncol=2)
    return _save(plt, fig, path)


def write_plots(em: Any, label: str, out: Path, control: Any = None, variants: dict[str, Any] | None = None
                ) -> list[Path]:
    """The three plots of one result (IE per layer, at every variant in `variants`; the M_l(t) heatmap;
    E_l(t) curves) into `out`, and with a target measure's control comparison (results.ControlRecord),
    its U_l(t) plot."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [plot_ie_per_layer(em, out / "ie_per_layer.png", f"IE per layer: {label}", variants),
             plot_mi_heatmap(em, out / "mi_heatmap.png", f"M_l(t): {label}"),
             plot_token_curves(em, out / "token_curves.png", f"E_l(t): {label}")]
    if control is not None and control.target is not None:
        paths.append(plot_target(control.target, control.kind, out / "target_per_boundary.png",
                                 f"U_l(t) about the label: {label}"))
    return paths
