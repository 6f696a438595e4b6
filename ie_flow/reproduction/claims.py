"""The paper's four claims, each tested on the reproduction's measurements: a table, the findings
per estimator (analysis.Finding) and a figure. `document.py` turns them into the report.

Every comparison by one estimator reads all its cells at one variant and over one set of layers:
those valid in every cell it compares (analysis.common_layers)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ie_flow.reproduction.analysis import (
    Finding, Measured, Value, basis, by_tags, common_layers, common_variant, decide, headlines, ie_mean, mean_curve,
    mean_of, saturated_share, set_by_corpus, slope, spread, token_rise, VERDICTS,
)

ESTIMATORS = ("infonce", "smoothed")
ICL = ("icl-countries", "icl-animals", "icl-colours")
# the mix claim 1 compares with: its 16 names span the three categories, its prefix entropy is the
# one-category corpora's at every position (icl-mixed's 48 names would differ before any model runs)
MIXED = "icl-mixed-matched"
SIZES_FOR_A_TREND = 3  # sizes of one family a size trend needs
ONE_SIZE = "not testable here (one size per family)"


@dataclass
class ClaimResult:
    experiment: str
    findings: list[Finding]
    rows: list[list[str]]  # the table: header first
    figure: Path | None
    variants: dict[str, str] = field(default_factory=dict)  # estimator -> the variant used and whether it is valid
    parts: dict[str, str] = field(default_factory=dict)  # a claim in two parts: the verdict of each
    # a verdict the data's design sets before any finding (claim 4 offline), with its reason
    fixed: tuple[str, str] | None = None

    @property
    def verdict(self) -> str:
        if self.fixed:
            return self.fixed[0]
        if self.parts:  # the weaker part decides (VERDICTS runs from strongest to weakest)
            return max(self.parts.values(), key=VERDICTS.index)
        return decide(self.findings)[0]

    @property
    def basis(self) -> str:
        """What the verdict rests on: the measures, variants and n (or the fixed verdict's reason)."""
        if self.fixed:
            return self.fixed[1]
        if self.parts:
            return "; ".join(f"{part}: {basis(decide([f for f in self.findings if f.part == part])[1]) or '-'}"
                             for part in dict.fromkeys(f.part for f in self.findings))
        return basis(decide(self.findings)[1]) or "-"


def _one_variant(ms: list[Measured]) -> tuple[str, str]:
    """The variant every cell of a claim by one estimator is read at, and its note ("" for an
    estimator without variants)."""
    variant, valid = common_variant(ms)
    if not variant:
        return "", ""
    recorded = headlines(ms)
    several = f" (cells of several corpus families, at {', '.join(recorded)}: all read at one)" \
        if len(recorded) > 1 else ""
    return variant, variant + several + ("" if valid else " (not valid in every layer of every cell)")


def _with_controls(measured: dict[str, Measured], exp: str, est: str) -> list[Measured]:
    """An experiment's measurements by `est`, its controls' included (est:control-KIND)."""
    return [m for m in measured.values() if m.entry.experiment == exp and m.entry.estimator.split(":")[0] == est]


def _each_estimator(measured: dict[str, Measured], exp: str, variants: dict[str, str]):
    """Per estimator: its measurements of `exp` (controls included), the one variant they are read
    at (noted in `variants`) and the layers valid in all of them."""
    for est in ESTIMATORS:
        every = _with_controls(measured, exp, est)
        variant, variants[est] = _one_variant(every)
        yield est, every, variant, common_layers([m.at(variant) for m in every])


def _own(every: list[Measured]) -> list[Measured]:
    """The model's own measurements (not its controls')."""
    return [m for m in every if ":" not in m.entry.estimator]


def _model_sat(every: list[Measured], variant: str) -> float:
    """The saturated share of the model's own measurements (not its controls')."""
    return _sat(_own(every), variant)


def _n(ms: list[Measured]) -> str:
    sizes = sorted({m.samples for m in ms})
    return "-" if not sizes else str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"


def _ie(ms: list[Measured], variant: str, layers: list[int] | None = None) -> Value:
    return mean_of([ie_mean(m.at(variant), layers) for m in ms]) if ms else Value(math.nan, math.nan, math.nan)


def _sat(ms: list[Measured], variant: str = "") -> float:
    return saturated_share([m.at(variant) for m in ms])


def _corpus(m: Measured) -> str:
    """A corpus as the table names it: a built-in by name, a file by its file name (a local path is
    the machine's, not the result's; the corpus digest in "What we ran" identifies it)."""
    name = str(m.entry.tags.get("corpus.name"))
    return Path(name).name if Path(name).is_absolute() else name


def _layer_flags(em: Any) -> str:
    return f"{sum(l.saturated for l in em.layers)} / {sum(not l.valid for l in em.layers)} of {len(em.layers)}"


def _finding(est: str, effect: Value, control: Value | None, every: list[Measured], variant: str,
             part: str = "") -> Finding:
    own = _own(every)
    return Finding(est, effect, control, _sat(own, variant), part, variant, _n(own), set_by_corpus(own))


def icl(measured: dict[str, Measured], figures: Path) -> ClaimResult:
    """1a: one category (clear-cut) above the K-matched mix; 1b: the spread of IE over layers grows with shots."""
    exp, rows, clear, grow, variants = "icl", [["corpus", "shots", "estimator", "n", "IE (bits)", "spread over layers",
                                              "saturated / invalid layers"]], [], [], {}
    curves: dict[str, list[tuple[int, Value]]] = {}
    for est, every, variant, keep in _each_estimator(measured, exp, variants):
        shots = sorted({m.entry.tags["corpus.shots"] for m in _own(every)})
        per_k = []
        for k in shots:
            cell = {c: by_tags(measured, exp, est, **{"corpus.name": c, "corpus.shots": k}) for c in (*ICL, MIXED)}
            for c, ms in cell.items():
                for m in ms:
                    em = m.at(variant)
                    rows.append([c, str(k), est, str(m.samples), str(ie_mean(em, keep)), str(spread(em, keep)),
                                 _layer_flags(em)])
                    curves.setdefault(f"{c} ({est})", []).append((k, spread(em, keep)))
            per_k.append(mean_of([_ie(cell[c], variant, keep) for c in ICL]) - _ie(cell[MIXED], variant, keep))
        ctrl = _clear_cut_control(measured, variant, keep) if est == "smoothed" else None
        clear.append(_finding(est, mean_of(per_k), ctrl, every, variant, "clear-cut"))
        grow.append(_finding(est, _spread_growth(measured, exp, est, variant, keep), None, every, variant, "spread"))
    mine = {c: by_tags(measured, exp, "mine-paper", **{"corpus.name": c}) for c in ("icl-countries", MIXED)}
    if all(mine.values()):
        both = mine["icl-countries"] + mine[MIXED]
        clear.append(Finding("mine-paper", _ie(mine["icl-countries"], "") - _ie(mine[MIXED], ""), None, _sat(both),
                             "clear-cut", n=_n(both)))
    result = ClaimResult(exp, clear + grow, rows, _plot_spread(curves, figures / "icl-spread.png"), variants)
    result.parts = {"clear-cut": decide(clear)[0], "spread grows with shots": decide(grow)[0]}
    return result


def _clear_cut_control(measured: dict[str, Measured], variant: str, keep: list[int]) -> Value | None:
    ctrl = {c: by_tags(measured, "icl", "smoothed:control-random", **{"corpus.name": c}) for c in (*ICL, MIXED)}
    if not all(ctrl.values()):
        return None
    return mean_of([_ie(ctrl[c], variant, keep) for c in ICL]) - _ie(ctrl[MIXED], variant, keep)


def _spread_growth(measured: dict[str, Measured], exp: str, est: str, variant: str, keep: list[int]) -> Value:
    """Spread at the most shots minus at the fewest, averaged over the four corpora."""
    out = []
    for c in (*ICL, MIXED):
        ms = sorted(by_tags(measured, exp, est, **{"corpus.name": c}), key=lambda m: m.entry.tags["corpus.shots"])
        if len(ms) >= 2:
            out.append(spread(ms[-1].at(variant), keep) - spread(ms[0].at(variant), keep))
    return mean_of(out)


def natural_text(measured: dict[str, Measured], figures: Path) -> ClaimResult:
    """E(t) rises from the second token to the last; the shuffled-token windows are the control."""
    exp = "natural-text"
    rows = [["corpus", "tokens", "order", "estimator", "n", "E(t) at tokens 2 ... N (mean over layers)",
             "rise from token 2 to N"]]
    findings, variants, curves = [], {}, {}
    for est in ESTIMATORS:  # the ICL side: countries at 4 shots (8 tokens, as the 8-token windows)
        every = by_tags(measured, exp, est) + by_tags(measured, "icl", est, **{"corpus.name": "icl-countries",
                                                                                "corpus.shots": 4})
        variant, variants[est] = _one_variant(every)
        keep = common_layers([m.at(variant) for m in every], curves=True)
        real, shuffled = [], []
        for m in sorted(every, key=lambda m: m.key):
            tags = m.entry.tags
            em, order = m.at(variant), "shuffled" if tags.get("corpus.shuffle_tokens") else "as written"
            curve = mean_curve(em, keep)
            rows.append([_corpus(m), str(m.record.manifest.tokens), order, est, str(m.samples),
                         " ".join(f"{v:.2f}" for v in curve[1:]), str(token_rise(em, keep))])
            curves[f"{_corpus(m)} {m.record.manifest.tokens} tok, {order} ({est})"] = curve
            if m.entry.experiment == exp and m.record.manifest.tokens == 8:
                (shuffled if order == "shuffled" else real).append(token_rise(em, keep))
        text = [m for m in every if m.entry.experiment == exp]
        findings.append(_finding(est, mean_of(real), mean_of(shuffled) if shuffled else None, text, variant))
    return ClaimResult(exp, findings, rows, _plot_curves(curves, figures / "natural-text-curves.png"), variants)


def human_vs_model(measured: dict[str, Measured], figures: Path) -> ClaimResult:
    """3: IE of the model-written windows minus the human-written ones of the same documents, per
    generator; the same difference on the random-weight copy is the control."""
    exp = "human-vs-model"
    rows = [["generator", "writer", "estimator", "n", "IE (bits)", "random-weight control IE"]]
    findings, variants, bars = [], {}, {}
    for est, every, variant, keep in _each_estimator(measured, exp, variants):
        effects, controls = [], []
        for gen in sorted({m.entry.tags["generator"] for m in every}):
            side = {w: by_tags(measured, exp, est, generator=gen, writer=w) for w in ("model", "human")}
            ctrl = {w: by_tags(measured, exp, f"{est}:control-random", generator=gen, writer=w) for w in ("model", "human")}
            for w in ("model", "human"):
                value = _ie(side[w], variant, keep)
                c = _ie(ctrl[w], variant, keep) if ctrl[w] else None
                rows.append([gen, w, est, _n(side[w]), str(value), str(c) if c else "-"])
                bars[f"{gen}\n{w} ({est})"] = value
            effects.append(_ie(side["model"], variant, keep) - _ie(side["human"], variant, keep))
            if all(ctrl.values()):
                controls.append(_ie(ctrl["model"], variant, keep) - _ie(ctrl["human"], variant, keep))
        findings.append(_finding(est, mean_of(effects), mean_of(controls) if controls else None, every, variant))
    return ClaimResult(exp, findings, rows, _plot_bars(bars, figures / "human-vs-model.png"), variants)


def _family(m: Measured) -> str:
    return str(m.entry.tags.get("family") or m.entry.tags.get("model"))


def model_size(measured: dict[str, Measured], figures: Path) -> ClaimResult:
    """4: IE against model size within one family (the least-squares slope of IE on log2 of the
    parameter count, in bits per doubling), beside the same slope for the random-weight copies. A
    trend needs SIZES_FOR_A_TREND sizes of one family; with fewer, the claim is not testable here
    and the table shows what was measured. Each model is read over the layers valid in all of its
    own cells (models of different depth share no layer index)."""
    exp = "model-size"
    rows = [["family", "model", "parameters (M)", "estimator", "n", "IE (bits)", "random-weight control IE",
             "trained - random"]]
    findings, variants, profiles = [], {}, {}
    sizes: dict[str, set[str]] = {}
    for est, every, variant, _ in _each_estimator(measured, exp, variants):
        families: dict[str, list[tuple[float, Value, Value | None]]] = {}
        first = {m.entry.tags["model"]: m for m in every}
        for model in sorted(first, key=lambda x: (_family(first[x]), float(first[x].entry.tags.get("params_m", 0)))):
            side = by_tags(measured, exp, est, model=model)
            c = by_tags(measured, exp, f"{est}:control-random", model=model)
            keep = common_layers([m.at(variant) for m in side + c])
            ie, ctrl = _ie(side, variant, keep), (_ie(c, variant, keep) if c else None)
            family, params = _family((side or c)[0]), float((side or c)[0].entry.tags.get("params_m", math.nan))
            sizes.setdefault(family, set()).add(model)
            families.setdefault(family, []).append((params, ie, ctrl))
            rows.append([family, model, f"{params:g}", est, _n(side), str(ie), str(ctrl) if c else "-",
                         str(ie - ctrl) if c else "-"])
            for m in side + c:
                profiles[f"{model}{' random' if ':' in m.entry.estimator else ''} ({est})"] = m.at(variant)
        for family, points in sorted(families.items()):
            if len(points) < SIZES_FOR_A_TREND:
                continue
            x = [math.log2(p) for p, _, _ in points]
            control = slope(x, [c for _, _, c in points]) if all(c is not None for _, _, c in points) else None
            own = [m for m in _own(every) if _family(m) == family]
            findings.append(_finding(est, slope(x, [v for _, v, _ in points]), control, own, variant, family))
    result = ClaimResult(exp, findings, rows, _plot_depth(profiles, figures / "model-size.png"), variants)
    if sizes and max(len(v) for v in sizes.values()) < SIZES_FOR_A_TREND:
        have = ", ".join(f"{f}: {len(v)}" for f, v in sorted(sizes.items()))
        result.fixed = (ONE_SIZE, f"a size trend needs {SIZES_FOR_A_TREND} sizes of one family; measured here "
                                  f"{have} (sizes per family). The hub workflow workflows/paper-hub/4-model-size.yaml "
                                  "measures a series of one family where the model hub is reachable")
    elif len({f.part for f in findings}) > 1:  # several families: each a part, the weaker decides
        result.parts = {part: decide([f for f in findings if f.part == part])[0]
                        for part in dict.fromkeys(f.part for f in findings)}
    return result


# --- figures -----------------------------------------------------------------------------------------
def _axes(n: int) -> tuple[Any, Any, Any]:
    from ie_flow.plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, n, figsize=(6 * n, 4), squeeze=False)
    return plt, fig, axes[0]


def _estimator_panels(series: dict[str, Any]) -> tuple[Any, Any, list[tuple[Any, str, dict[str, Any]]]]:
    """A figure with one panel per estimator, and each panel's series (labelled "NAME (estimator)"),
    their labels without the estimator."""
    plt, fig, axes = _axes(len(ESTIMATORS))
    return plt, fig, [(ax, est, {label.replace(f" ({est})", ""): v for label, v in series.items()
                                 if label.endswith(f"({est})")}) for ax, est in zip(axes, ESTIMATORS)]


def _plot_spread(curves: dict[str, list[tuple[int, Value]]], path: Path) -> Path | None:
    if not curves:
        return None
    from ie_flow.plots import _save

    plt, fig, panels = _estimator_panels(curves)
    for ax, est, mine in panels:
        for label, pts in mine.items():
            pts = sorted(pts, key=lambda p: p[0])
            ax.errorbar([p[0] for p in pts], [p[1].value for p in pts], capsize=3, marker="o",
                        yerr=[[p[1].value - p[1].low for p in pts], [p[1].high - p[1].value for p in pts]], label=label)
        ax.set(xlabel="shots", ylabel="spread of IE over layers (bits)", title=est)
        ax.legend(fontsize=8)
    return _save(plt, fig, path)


def _plot_curves(curves: dict[str, np.ndarray], path: Path) -> Path | None:
    if not curves:
        return None
    from ie_flow.plots import _save

    plt, fig, panels = _estimator_panels(curves)
    for ax, est, mine in panels:
        for label, curve in mine.items():
            ax.plot(range(len(curve)), curve, marker="o", ls="--" if "shuffled" in label else "-", label=label)
        ax.set(xlabel="token position t (0-based)", ylabel="E(t), mean over layers (bits)", title=est)
        ax.legend(fontsize=7)
    return _save(plt, fig, path)


def _plot_bars(bars: dict[str, Value], path: Path) -> Path | None:
    if not bars:
        return None
    from ie_flow.plots import _save

    plt, fig, axes = _axes(1)
    labels, values = list(bars), list(bars.values())
    axes[0].bar(range(len(values)), [v.value for v in values],
                yerr=[[v.value - v.low for v in values], [v.high - v.value for v in values]], capsize=3)
    axes[0].set_xticks(range(len(labels)), labels, fontsize=7)
    axes[0].set(ylabel="IE, mean over layers (bits)", title="model-written vs human-written text")
    return _save(plt, fig, path)


def _plot_depth(profiles: dict[str, Any], path: Path) -> Path | None:
    if not profiles:
        return None
    from ie_flow.plots import _save

    plt, fig, axes = _axes(len(ESTIMATORS))
    for ax, est in zip(axes, ESTIMATORS):
        for label, em in profiles.items():
            if label.endswith(f"({est})"):
                layers = [l.layer for l in em.layers]
                depth = np.array(layers) / max(max(layers), 1)
                ax.plot(depth, [l.ie for l in em.layers], ls="--" if "random" in label else "-",
                        label=label.replace(f" ({est})", ""))
        ax.set(xlabel="relative depth (layer / last layer)", ylabel="IE (bits)", title=est)
        ax.legend(fontsize=8)
    return _save(plt, fig, path)
