"""The global analyses' faces: a terminal table (``*_table``), a JSON-ready dict (``*_dict``)
and a plot (``*_plot``: PNG or SVG, needs matplotlib, the ``[plot]`` extra) for each result.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from blackbox_sal.evaluation.bag_of_words import BagOfWords
from blackbox_sal.evaluation.class_jacobians import ClassJacobians, JacobianCorrelation, as_array
from blackbox_sal.evaluation.common import pyplot, save_figure
from blackbox_sal.evaluation.feature_gradients import AverageGradient
from blackbox_sal.evaluation.word_importance import WordImportance, WordStat
from blackbox_sal.vocabulary.errors import UsageError


def _f(value: float | None, spec: str = "+.4f") -> str:
    return "-" if value is None else format(value, spec)


def average_gradient_dict(result: AverageGradient) -> dict[str, Any]:
    return {"model": result.model, "objective": result.objective, "n": result.n, "backend": result.backend,
            "g": {name: float(v) for name, v in zip(result.names, result.g, strict=True)},
            "skipped": [{"row": k, "error": e} for k, e in result.skipped], "notes": list(result.notes)}


def global_bow_dict(result: BagOfWords) -> dict[str, Any]:
    """JSON-ready: everything but the full g (see :func:`average_gradient_dict` for that)."""
    gradient = result.gradient
    return {
        "model": gradient.model, "objective": gradient.objective, "n": gradient.n, "backend": gradient.backend,
        "positive": result.positive,
        "top_positive": [{"feature": w, "g": v} for w, v in result.top_positive],
        "top_negative": [{"feature": w, "g": v} for w, v in result.top_negative],
        "surrogate": {s.rule: {"b": s.b, "agreement_with_model": s.agreement, "accuracy_on_labels": s.accuracy,
                               "positive_rate": s.positive_rate, "fitted_on": s.fitted_on}
                      for s in result.surrogates},
        "positive_rate_model": result.positive_rate_model, "positive_rate_labels": result.positive_rate_labels,
        "model_accuracy": result.model_accuracy, "labelled": result.n_labelled, "fit_rows": result.n_fit,
        "skipped": [{"row": k, "error": e} for k, e in gradient.skipped], "notes": list(gradient.notes),
    }


def global_bow_table(result: BagOfWords) -> str:
    gradient = result.gradient
    lines = [f"global analysis of {gradient.model} over {gradient.n:,} rows (backend {gradient.backend})",
             f"g = mean over the rows of d({gradient.objective}) / d features", ""]
    width = max([len(w) for w, _ in result.top_positive + result.top_negative] + [12])
    lines.append(f"  {'top positive':<{width + 13}}top negative")
    for (wp, vp), (wn, vn) in zip(result.top_positive, result.top_negative, strict=False):
        lines.append(f"  {wp:<{width}} {vp:+9.4f}   {wn:<{width}} {vn:+9.4f}")
    lines += ["", f"linear surrogate: predict {result.positive} when x . g + b > 0",
              f"  {'b':<15} {'value':>9} {'agreement':>10} {'accuracy':>9} {'pos. rate':>10}  fitted on"]
    for s in result.surrogates:
        lines.append(f"  {s.rule:<15} {s.b:+9.4f} {s.agreement:10.4f} {_f(s.accuracy, '.4f'):>9} "
                     f"{s.positive_rate:10.4f}  {s.fitted_on}")
    model_line = f"the model: positive rate {result.positive_rate_model:.4f}"
    if result.model_accuracy is not None:
        model_line += (f"; accuracy against the labels {result.model_accuracy:.4f} ({result.n_labelled:,} labelled, "
                       f"positive rate {_f(result.positive_rate_labels, '.4f')})")
    lines += ["", model_line]
    lines += [f"note: {n}" for n in gradient.notes]
    if gradient.skipped:
        lines.append(f"note: {len(gradient.skipped)} row(s) skipped (the first, {gradient.skipped[0][0]}: "
                     f"{gradient.skipped[0][1]})")
    return "\n".join(lines) + "\n"


def _bars(ax: Any, pairs: Sequence[tuple[str, float]], title: str, errors: Sequence[float] | None = None,
          xlabel: str = "") -> None:
    """Horizontal bars, the first pair on top, in the palette's colours: blue for the target
    (>= 0), red against it; ``errors``: one standard deviation each, drawn as whiskers."""
    from blackbox_sal.render import palette

    names = [w for w, _ in pairs][::-1]
    values = [v for _, v in pairs][::-1]
    ax.barh(range(len(values)), values, xerr=None if errors is None else list(errors)[::-1],
            color=[palette.hex_of(palette.end_of(v)) for v in values], error_kw={"ecolor": "#444", "lw": 0.8})
    ax.set_yticks(range(len(values)))
    ax.set_yticklabels(names, fontsize=8)
    ax.axvline(0, color="black", linewidth=0.5)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)


def global_bow_plot(result: BagOfWords, path: str | Path, top: int | None = None) -> Path:
    """Bar charts of the top positive and negative features of g (PNG or SVG by suffix)."""
    plt = pyplot()
    n = top or len(result.top_positive)
    fig, axes = plt.subplots(1, 2, figsize=(9, 0.25 * n + 1.6))
    objective = result.gradient.objective
    _bars(axes[0], result.top_positive[:n], f"for {result.positive}: largest g",
          xlabel=f"g = mean d({objective}) / d feature")
    _bars(axes[1], result.top_negative[:n], f"against {result.positive}: smallest g",
          xlabel=f"g = mean d({objective}) / d feature")
    fig.suptitle(f"{result.gradient.model}: mean gradient over {result.gradient.n:,} rows "
                 "(blue: for, red: against)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def class_jacobians_dict(result: ClassJacobians) -> dict[str, Any]:
    return {"model": result.model, "over": result.over, "own_by": result.own_by, "n": result.n,
            "backend": result.backend, "classes": list(result.classes), "counts": list(result.counts),
            "features": list(result.names), "image_shape": list(result.image_shape) if result.image_shape else None,
            "jacobian": [[float(v) for v in row] for row in result.jacobian],
            "skipped": [{"row": k, "error": e} for k, e in result.skipped]}


def jacobian_correlation_dict(result: JacobianCorrelation) -> dict[str, Any]:
    return {"raw": {"per_class": list(result.raw), "mean": result.raw_mean},
            "centered": {"per_class": list(result.centered), "mean": result.centered_mean}}


def class_jacobians_table(result: ClassJacobians, compare: JacobianCorrelation | None = None) -> str:
    """Per class: inputs averaged, mean |J|, the largest entries; with ``compare``, the
    correlations with another model's Jacobians (or weights)."""
    over = ("all inputs" if result.over == "all" else
            f"the inputs of each class (by {result.own_by})")
    lines = [f"mean Jacobian d output_c / d features of {result.model} over {over}: {result.n:,} inputs "
             f"(backend {result.backend})", ""]
    header = f"  {'class':<8} {'inputs':>7} {'mean |J|':>9}  largest +            largest -"
    if compare is not None:
        header = (f"  {'class':<8} {'inputs':>7} {'mean |J|':>9} {'pearson':>8} {'centered':>9}  "
                  f"largest +       largest -")
    lines.append(header)
    for c, name in enumerate(result.classes):
        row = result.jacobian[c]
        hi, lo = int(np.argmax(row)), int(np.argmin(row))
        extremes = f"{result.names[hi]} {row[hi]:+.4f}   {result.names[lo]} {row[lo]:+.4f}"
        corr = "" if compare is None else f" {compare.raw[c]:8.4f} {compare.centered[c]:9.4f}"
        lines.append(f"  {name:<8} {result.counts[c]:>7} {np.abs(row).mean():9.5f}{corr}  {extremes}")
    if compare is not None:
        lines += ["", f"mean over classes: pearson {compare.raw_mean:.4f}, centered {compare.centered_mean:.4f}"]
    return "\n".join(lines) + "\n"


def class_jacobians_plot(result: ClassJacobians, path: str | Path,
                         beside: Sequence[tuple[str, ClassJacobians | np.ndarray]] = (),
                         image_shape: tuple[int, int] | None = None, title: str | None = None) -> Path:
    """The per-class Jacobians as images (one row of C images), with rows ``beside`` (a title
    and [C, F] weights or Jacobians, e.g. a logistic regression's), each image in its own
    symmetric colour scale (the palette's: blue positive, red negative, with a colour bar).
    Needs an image shape (the model's config.json ``image_shape``, or ``image_shape``)."""
    shape = image_shape or result.image_shape
    if shape is None:
        raise UsageError("the Jacobians are drawn as images: the model's config.json has no image_shape [H, W]; "
                         "pass image_shape=(H, W)")
    rows = [(title or f"{result.model}\nmean Jacobian ({result.over})", result.jacobian),
            *((t, as_array(v)) for t, v in beside)]
    n_classes = result.jacobian.shape[0]
    for t, arr in rows:
        if arr.shape != result.jacobian.shape:
            raise UsageError(f"{t!r}: shape {arr.shape}, not {result.jacobian.shape}")
    from blackbox_sal.render import palette

    plt = pyplot()
    cmap = palette.colormap()
    fig, axes = plt.subplots(len(rows), n_classes, figsize=(n_classes * 1.1 + 0.8, len(rows) * 1.3 + 0.4),
                             squeeze=False)
    for r, (t, arr) in enumerate(rows):
        for c in range(n_classes):
            ax = axes[r, c]
            lim = float(np.abs(arr[c]).max()) or 1.0
            image = ax.imshow(arr[c].reshape(shape), cmap=cmap, vmin=-lim, vmax=lim)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(result.classes[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(t, fontsize=7)
    fig.tight_layout()
    # one scale per image: the bar reads in units of each image's own largest |value|
    bar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, ticks=[-lim, 0, lim])
    bar.ax.set_yticklabels(["-max", "0", "+max"], fontsize=7)
    bar.set_label("blue raises the class, red lowers it", fontsize=7)
    return save_figure(fig, path)


def _stat_dict(s: WordStat) -> dict[str, Any]:
    return {"word": s.word, "count": s.count, "mean": s.mean, "std": s.std}


def word_importance_dict(result: WordImportance, top: int | None = None) -> dict[str, Any]:
    """JSON-ready: the top and bottom words overall and per predicted class, and every word's
    statistics overall (``all``)."""
    return {
        "model": result.model, "method": result.method, "target": result.target, "n": result.n,
        "unit": result.unit, "texts": result.texts, "min_count": result.min_count, "rare": result.rare,
        "top": [_stat_dict(s) for s in result.top(top)], "bottom": [_stat_dict(s) for s in result.bottom(top)],
        "by_class": {label: {"top": [_stat_dict(s) for s in result.top(top, stats)],
                             "bottom": [_stat_dict(s) for s in result.bottom(top, stats)]}
                     for label, stats in result.by_class},
        "all": [_stat_dict(s) for s in result.words],
        "notes": [{"note": n, "texts": k} for n, k in result.notes],
        "skipped": [{"row": k, "error": e} for k, e in result.skipped],
    }


def _stat_columns(left: tuple[WordStat, ...], right: tuple[WordStat, ...], titles: tuple[str, str]) -> list[str]:
    width = max([len(s.word) for s in left + right] + [10])
    cell = f"{{:<{width}}} {{:>9}} {{:>8}} {{:>6}}"
    lines = ["  " + cell.format(titles[0], "mean", "std", "count") + "   " + cell.format(titles[1], "mean", "std",
                                                                                            "count")]
    for k in range(max(len(left), len(right))):
        parts = []
        for stats in (left, right):
            s = stats[k] if k < len(stats) else None
            parts.append(cell.format("", "", "", "") if s is None else
                         cell.format(s.word, f"{s.mean:+.4f}", f"{s.std:.4f}", s.count))
        lines.append("  " + "   ".join(parts))
    return lines


def word_importance_table(result: WordImportance, top: int | None = None) -> str:
    target = "each text's predicted class" if result.target == "predicted" else result.target
    over = f"{result.n:,} {result.unit}" + (f" of {result.texts:,} texts" if result.unit != "texts" else "")
    lines = [f"word importance of {result.model}: {result.method} scores of {target}, mean per word over "
             f"{over} (words seen at least {result.min_count} times: {len(result.words):,}; "
             f"{result.rare:,} rarer ones left out)", ""]
    lines += _stat_columns(result.top(top), result.bottom(top), ("highest", "lowest"))
    for label, stats in result.by_class:
        lines += ["", f"{result.unit} predicted {label}:"]
        lines += _stat_columns(result.top(top, stats), result.bottom(top, stats), ("highest", "lowest"))
    for note, count in result.notes:
        lines.append(f"note ({count} of {result.n} {result.unit}; the first): {note}")
    if result.skipped:
        lines.append(f"note: {len(result.skipped)} text(s) skipped (the first, {result.skipped[0][0]}: "
                     f"{result.skipped[0][1]})")
    return "\n".join(lines) + "\n"


def word_importance_plot(result: WordImportance, path: str | Path, top: int | None = None) -> Path:
    """Bar charts of the words with the highest and lowest mean scores, with their spread (one
    standard deviation) and counts (PNG or SVG). Explained for each text's predicted class, a
    row per class: the texts predicted ``c``, the words that pushed toward ``c`` and those
    that pushed against it (mixing classes would rank a word by which class it was read
    for). Words seen fewer than ``min_count`` times are hidden, and the figure says how many."""
    plt = pyplot()
    if result.target in ("predicted", "each predicted entity") and result.by_class:
        panels = [(f"{result.unit} predicted {label}", label, stats) for label, stats in result.by_class]
    else:
        panels = [(f"all {result.n:,} {result.unit}", result.target, result.words)]
    n = max([len(result.top(top, stats)) for _, _, stats in panels] + [1])
    fig, axes = plt.subplots(len(panels), 2, figsize=(9, len(panels) * (0.22 * n + 1.3) + 0.8), squeeze=False)
    for (title, target, stats), row in zip(panels, axes, strict=True):
        # a panel holds only its side: with few words the top and the bottom overlap
        high = [s for s in result.top(top, stats) if s.mean > 0]
        low = [s for s in result.bottom(top, stats) if s.mean < 0]
        count = len(stats)
        axis = f"mean {result.method} score for {target}"
        _bars(row[0], [(f"{s.word} ({s.count})", s.mean) for s in high],
              f"{title}: most for {target} ({count:,} words)", [s.std for s in high], axis)
        _bars(row[1], [(f"{s.word} ({s.count})", s.mean) for s in low],
              f"{title}: most against {target}", [s.std for s in low], axis)
    fig.suptitle(f"{result.model}: {result.method}, mean score per word over {result.n:,} {result.unit} "
                 "(blue: for, red: against; whiskers: one std; in brackets: times seen)", fontsize=9)
    fig.text(0.5, 0.005, f"words seen fewer than {result.min_count} times are hidden: {result.rare:,} of "
             f"{result.rare + len(result.words):,} words", ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return save_figure(fig, path)
