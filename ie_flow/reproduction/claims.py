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
    mean_of, saturated_share, set_by_corpus, slope, spread, token_rise, verdict_rank,
)

ESTIMATORS = ("infonce", "smoothed")
ICL = ("icl-countries", "icl-animals", "icl-colours")
# the mix claim 1 compares with: its 16 names span the three categories, its prefix entropy is the
# one-category corpora's at every position (icl-mixed's 48 names would differ before any model runs)
MIXED = "icl-mixed-matched"
# the target measure's corpus (docs/METHOD.md section 8): whether all four names share a category is a
# label no single name carries (exact ceilings known), so "how clear-cut the meaning is" has an exact answer
TARGET_CORPUS, TARGET_ESTIMATOR = "icl-coherence", "probe"
SIZES_FOR_A_TREND = 3  # sizes of one family a size trend needs
ONE_SIZE = "not testable here (one size per family)"
# n per cell each claim's measure needs, and why (docs/METHOD.md section 7: below it the smoothed
# measure is invalid in layers at the β it reads, so a finding at a smaller n gives no verdict);
# `ie-flow reproduce --scale paper` runs at least this where the corpus has it
NEEDED_N = {
    "icl": (4096, "on in-context lists the smoothed measure is valid in every layer at β = 0.6 from n = 4,096"),
    "natural-text": (16384, "on prose only β = 0.8 is valid in every layer of a trained model and its random "
                            "copy, and only from n = 16,384"),
    "human-vs-model": (8192, "prose again, compared writer against writer: at n = 8,192 β = 0.8 is valid in 27 "
                             "of 30 layers of the trained model and in all of its random copy"),
    "model-size": (16384, "prose, as claim 2"),
}


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
            return max(self.parts.values(), key=verdict_rank)
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


def _ie(ms: list[Measured], variant: str, layers: list[int] | None = None, part: str = "ie") -> Value:
    """Mean IE of cells (or, `part="gauss"`, of its Gaussian reference part: analysis.ie_mean)."""
    return mean_of([ie_mean(m.at(variant), layers, part) for m in ms]) if ms else Value(math.nan, math.nan, math.nan)


def _gaussian(est: str, parts: list[Value]) -> Value | None:
    """The Gaussian part of a smoothed effect (the same arithmetic on the reference means); None for
    an estimator without a reference."""
    return mean_of(parts) if est == "smoothed" and parts else None


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
             part: str = "", net: bool = False, note: str = "", gaussian: Value | None = None) -> Finding:
    own = _own(every)
    needs = NEEDED_N.get(own[0].entry.experiment, (0, ""))[0] if own else 0
    return Finding(est, effect, control, _sat(own, variant), part, variant, _n(own), set_by_corpus(own), needs,
                   net, note, gaussian)


def _listed(values: list[Any]) -> str:
    return ", ".join(map(str, values))


def icl(measured: dict[str, Measured], figures: Path) -> ClaimResult:
    """1a: one category (clear-cut) above the K-matched mix, net of the same difference on the
    random-weight copy at each shot count (a difference-in-differences); 1b: the spread of IE over
    layers grows with shots."""
    exp, rows, clear, grow, variants = "icl", [["corpus", "shots", "estimator", "n", "IE (bits)",
                                              "random-weight copy IE", "spread over layers",
                                              "saturated / invalid layers"]], [], [], {}
    curves: dict[str, list[tuple[int, Value]]] = {}
    for est, every, variant, keep in _each_estimator(measured, exp, variants):
        shots = sorted({m.entry.tags["corpus.shots"] for m in _own(every)})
        did, did_gauss, random, used = [], [], [], []
        for k in shots:
            at = {"corpus.shots": k}
            cell = {c: by_tags(measured, exp, est, **{"corpus.name": c, **at}) for c in (*ICL, MIXED)}
            ctrl = {c: by_tags(measured, exp, f"{est}:control-random", **{"corpus.name": c, **at})
                    for c in (*ICL, MIXED)}
            for c, ms in cell.items():
                for m in ms:
                    em = m.at(variant)
                    rows.append([c, str(k), est, str(m.samples), str(ie_mean(em, keep)),
                                 str(_ie(ctrl[c], variant, keep)) if ctrl[c] else "-", str(spread(em, keep)),
                                 _layer_flags(em)])
                    curves.setdefault(f"{c} ({est})", []).append((k, spread(em, keep)))
            trained = _clear_cut(cell, variant, keep)
            copy = _clear_cut(ctrl, variant, keep) if all(ctrl.values()) else None
            rows.append(["one category - mix", str(k), est, _n([m for ms in cell.values() for m in ms]), str(trained),
                         str(copy) if copy else "- (no control: not in the difference-in-differences)", "", ""])
            if copy is not None:  # a shot count without its control is left out, never mixed in raw
                did.append(trained - copy)  # the two sides' intervals added in quadrature: conservative (paired)
                did_gauss.append(_clear_cut(cell, variant, keep, "gauss") - _clear_cut(ctrl, variant, keep, "gauss"))
                random.append(copy)
                used.append(k)
        left = [k for k in shots if k not in used]
        note = (f"trained minus random-weight copy at shots {_listed(used)}"
                + (f"; shots {_listed(left)} have no control and are left out" if left else "") if used else
                f"no shot count has its random-weight control measured by {est}: no difference-in-differences")
        clear.append(_finding(est, mean_of(did), mean_of(random) if random else None, every, variant, "clear-cut",
                              net=True, note=note, gaussian=_gaussian(est, did_gauss)))
        grow.append(_finding(est, _spread_growth(measured, exp, est, variant, keep), None, every, variant, "spread"))
    mine = {c: by_tags(measured, exp, "mine-paper", **{"corpus.name": c}) for c in ("icl-countries", MIXED)}
    if all(mine.values()):
        both = mine["icl-countries"] + mine[MIXED]
        clear.append(Finding("mine-paper", _ie(mine["icl-countries"], "") - _ie(mine[MIXED], ""), None, _sat(both),
                             "clear-cut", n=_n(both)))
    target = _target_finding(measured, exp, rows, variants)
    result = ClaimResult(exp, clear + grow + target, rows, _plot_spread(curves, figures / "icl-spread.png"), variants)
    result.parts = {"clear-cut": decide(clear)[0], "spread grows with shots": decide(grow)[0]}
    if target:
        result.parts[target[0].part] = decide(target)[0]
    return result


def _target_finding(measured: dict[str, Measured], exp: str, rows: list[list[str]], variants: dict[str, str]
                    ) -> list[Finding]:
    """The target measure on icl-coherence: target IE (usable information about the label at the last
    position minus each name's own, mean over layers) of the model minus its random-weight copy, with
    the emergence layer and the exact ceilings in the note; none where the cell was not run."""
    own = by_tags(measured, exp, TARGET_ESTIMATOR, **{"corpus.name": TARGET_CORPUS})
    ctrl = by_tags(measured, exp, f"{TARGET_ESTIMATOR}:control-random", **{"corpus.name": TARGET_CORPUS})
    if not own:
        return []
    variant, variants[TARGET_ESTIMATOR] = _one_variant(own + ctrl)
    keep = common_layers([m.at(variant) for m in own + ctrl])
    model, copy = _ie(own, variant, keep), (_ie(ctrl, variant, keep) if ctrl else None)
    rows.append([TARGET_CORPUS, "4 names", f"{TARGET_ESTIMATOR} (target IE)", _n(own), str(model),
                 str(copy) if copy else "-", "", _layer_flags(own[0].at(variant))])
    target = own[0].record.control.target if own[0].record.control else None
    note = "target IE, model minus random-weight copy, mean over the layers valid in both"
    if target is not None:
        first = "none" if target.emergence_boundary is None else f"boundary {target.emergence_boundary}"
        note += (f"; emergence layer (model's lower end above the copy's upper end): {first}; exact ceilings "
                 f"I(s; prefix) per position {', '.join(f'{c:.3f}' for c in target.ceilings)} bits")
    effect = model - copy if copy else Value(math.nan, math.nan, math.nan)
    return [_finding(TARGET_ESTIMATOR, effect, copy, own + ctrl, variant, "label decodable (target measure)",
                     net=True, note=note if copy else "no random-weight copy measured: no difference")]


def _clear_cut(cell: dict[str, list[Measured]], variant: str, keep: list[int], part: str = "ie") -> Value:
    """Mean IE (or its Gaussian part) of the one-category corpora minus the mix's."""
    return mean_of([_ie(cell[c], variant, keep, part) for c in ICL]) - _ie(cell[MIXED], variant, keep, part)


def _spread_growth(measured: dict[str, Measured], exp: str, est: str, variant: str, keep: list[int]) -> Value:
    """Spread at the most shots minus at the fewest, averaged over the four corpora."""
    out = []
    for c in (*ICL, MIXED):
        ms = sorted(by_tags(measured, exp, est, **{"corpus.name": c}), key=lambda m: m.entry.tags["corpus.shots"])
        if len(ms) >= 2:
            out.append(spread(ms[-1].at(variant), keep) - spread(ms[0].at(variant), keep))
    return mean_of(out)


def natural_text(measured: dict[str, Measured], figures: Path) -> ClaimResult:
    """E(t) rises from the second token to the last more on the as-written 8-token windows than on
    the shuffled-token windows of the same corpus (the control): the effect is the difference,
    paired by corpus, so a corpus without its shuffled cell gives none."""
    exp = "natural-text"
    rows = [["corpus", "tokens", "order", "estimator", "n", "E(t) at tokens 2 ... N (mean over layers)",
             "rise from token 2 to N"]]
    findings, variants, curves = [], {}, {}
    for est in ESTIMATORS:  # the ICL side: countries at 4 shots (8 tokens, as the 8-token windows)
        every = by_tags(measured, exp, est) + by_tags(measured, "icl", est, **{"corpus.name": "icl-countries",
                                                                                "corpus.shots": 4})
        variant, variants[est] = _one_variant(every)
        keep = common_layers([m.at(variant) for m in every], curves=True)
        windows: dict[str, dict[str, list[Measured]]] = {}  # corpus -> order -> its 8-token cells
        for m in sorted(every, key=lambda m: m.key):
            tags = m.entry.tags
            em, order = m.at(variant), "shuffled" if tags.get("corpus.shuffle_tokens") else "as written"
            curve = mean_curve(em, keep)
            rows.append([_corpus(m), str(m.record.manifest.tokens), order, est, str(m.samples),
                         " ".join(f"{v:.2f}" for v in curve[1:]), str(token_rise(em, keep))])
            curves[f"{_corpus(m)} {m.record.manifest.tokens} tok, {order} ({est})"] = curve
            if m.entry.experiment == exp and m.record.manifest.tokens == 8:
                windows.setdefault(_corpus(m), {}).setdefault(order, []).append(m)
        text = [m for m in every if m.entry.experiment == exp]
        findings.append(_shuffled_paired(est, windows, variant, keep, text))
    return ClaimResult(exp, findings, rows, _plot_curves(curves, figures / "natural-text-curves.png"), variants)


def _shuffled_paired(est: str, windows: dict[str, dict[str, list[Measured]]], variant: str, keep: list[int],
                     text: list[Measured]) -> Finding:
    """Rise as written minus rise shuffled, averaged over the corpora that have both; of those, only
    the ones whose cells reach the n the measure needs where any does (python-docs has 1,396
    windows at most: it would hold every scale below the need)."""
    def rise(ms: list[Measured]) -> Value:
        return mean_of([token_rise(m.at(variant), keep) for m in ms])

    paired = [c for c in sorted(windows) if len(windows[c]) == 2]
    unpaired = [c for c in sorted(windows) if c not in paired]
    needs = NEEDED_N["natural-text"][0]
    enough = [c for c in paired if min(m.samples for ms in windows[c].values() for m in ms) >= needs]
    used = enough or paired
    small = [c for c in paired if c not in used]
    notes = [f"as written minus shuffled, paired by corpus: {_listed(used)}" if used else
             f"no corpus has both its as-written and its shuffled 8-token windows measured by {est}: no effect "
             "without the control"]
    notes += [f"{_listed(small)} left out (n below the {needs:,} the measure needs)"] if small else []
    notes += [f"{_listed(unpaired)} without its shuffled or as-written cell: no effect from it"] if unpaired else []
    effect = mean_of([rise(windows[c]["as written"]) - rise(windows[c]["shuffled"]) for c in used])
    control = mean_of([rise(windows[c]["shuffled"]) for c in used]) if used else None
    cells = [m for c in used for ms in windows[c].values() for m in ms] or text
    return _finding(est, effect, control, cells, variant, net=True, note="; ".join(notes))


def human_vs_model(measured: dict[str, Measured], figures: Path) -> ClaimResult:
    """3: IE of the model-written windows minus the human-written ones of the same documents, per
    generator; the same difference on the random-weight copy is the control."""
    exp = "human-vs-model"
    rows = [["generator", "writer", "estimator", "n", "IE (bits)", "random-weight control IE"]]
    findings, variants, bars = [], {}, {}
    for est, every, variant, keep in _each_estimator(measured, exp, variants):
        effects, gauss, controls, one_writer = [], [], [], []
        for gen in sorted({m.entry.tags["generator"] for m in every}):
            side = {w: by_tags(measured, exp, est, generator=gen, writer=w) for w in ("model", "human")}
            ctrl = {w: by_tags(measured, exp, f"{est}:control-random", generator=gen, writer=w) for w in ("model", "human")}
            for w in ("model", "human"):
                if not side[w]:  # InfoNCE runs on one cell: no row for the writers it did not measure
                    continue
                value = _ie(side[w], variant, keep)
                c = _ie(ctrl[w], variant, keep) if ctrl[w] else None
                rows.append([gen, w, est, _n(side[w]), str(value), str(c) if c else "-"])
                bars[f"{gen}\n{w} ({est})"] = value
            if not all(side.values()):
                one_writer.append(gen)
                continue
            effects.append(_ie(side["model"], variant, keep) - _ie(side["human"], variant, keep))
            gauss.append(_ie(side["model"], variant, keep, "gauss") - _ie(side["human"], variant, keep, "gauss"))
            if all(ctrl.values()):
                controls.append(_ie(ctrl["model"], variant, keep) - _ie(ctrl["human"], variant, keep))
        note = f"{_listed(one_writer)}: one writer measured by {est}, no difference" if one_writer else ""
        findings.append(_finding(est, mean_of(effects), mean_of(controls) if controls else None, every, variant,
                                 note=note, gaussian=_gaussian(est, gauss)))
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
        if mine:  # an estimator measured on no cell of this claim leaves its panel empty
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
        if mine:
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
