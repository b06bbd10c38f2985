"""PNG figures for the evaluation and benchmark reports (matplotlib, Agg, no display).

Records are those of `starsrec.experiments.report` ({"dataset", "protocol", "model", "seed",
"metrics", "slices", ...}). `write_figures` draws, per (dataset, protocol): Recall@K and
NDCG@K against K, Recall@10 on the hard slices, the STARS ablations when there are any, and
each model's paired difference to the strongest baseline with its 95% interval;
`latency_cdf` draws the serving benchmark's per-request latencies, `scaling_loglog` the
training benchmark's time and memory against events and items. matplotlib is imported
inside the functions, through its object-oriented API (no pyplot state, no backend switch), so
importing this module or `starsrec` stays cheap. Figures are 1200x700 px, colours from "tab10".
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

KS = (5, 10, 20)
SLICES = {"cold": "cold-start items", "long_tail": "long-tail items", "repeat": "repeat items"}
KINDS = {
    "metric-vs-k": "Recall@K and NDCG@K",
    "slices": "Recall@10 on the hard slices",
    "differences": "NDCG@10 difference to the strongest baseline, 95% interval",
    "ablations": "NDCG@10 of the STARS ablations",
}
MARKERS = "osD^vP*Xph<>"


def _figure(title: str, ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 7), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(title, fontsize=15)
    return figure, figure.subplots(1, ncols, squeeze=False)[0]


def _save(figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def _colour(index: int):
    from matplotlib import colormaps

    return colormaps["tab10"](index % 10)


def _is_ablation(model: str) -> bool:
    return model.startswith("stars-")


def _by_model(records: Sequence[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(record["model"], []).append(record)
    return groups


def _main_models(records: Sequence[dict]) -> dict[str, list[dict]]:
    """Models for the line and slice figures: the ablations have a figure of their own."""
    groups = _by_model(records)
    main = {m: runs for m, runs in groups.items() if not _is_ablation(m)}
    return main or groups


def _mean_std(values) -> tuple[float, float]:
    values = np.asarray([v for v in values if v is not None and not np.isnan(v)], np.float64)
    if len(values) == 0:
        return float("nan"), 0.0
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _seeds(runs: Sequence[dict]) -> str:
    return f"{len(runs)} seeds" if len(runs) > 1 else "1 run"


def metric_vs_k(records: Sequence[dict], path: str | Path, title: str) -> Path:
    """Recall@K and NDCG@K for K in 5/10/20, one line per model (mean ± std over seeds)."""
    figure, axes = _figure(title, ncols=2)
    for i, (model, runs) in enumerate(_main_models(records).items()):
        for ax, metric in zip(axes, ("recall", "ndcg"), strict=True):
            stats = [_mean_std(r["metrics"].get(f"{metric}@{k}") for r in runs) for k in KS]
            means, stds = zip(*stats, strict=True)
            ax.errorbar(
                KS,
                means,
                yerr=stds if len(runs) > 1 else None,
                color=_colour(i),
                marker=MARKERS[i % len(MARKERS)],
                capsize=4,
                linewidth=2,
                label=f"{model} ({_seeds(runs)})",
            )
    for ax, name in zip(axes, ("Recall@K", "NDCG@K"), strict=True):
        ax.set(xlabel="K (length of the recommendation list)", ylabel=name, xticks=KS)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right upper", title="model")
    return _save(figure, path)


def _present_slices(records: Sequence[dict]) -> dict[str, int]:
    """Slices with queries and a Recall@10 in them: name -> n."""
    slices = records[0].get("slices") or {}
    counts = {name: slices.get(name, {}).get("queries", 0) for name in SLICES}
    return {name: n for name, n in counts.items() if n and "recall@10" in slices[name]}


def slice_bars(records: Sequence[dict], path: str | Path, title: str) -> Path:
    """Grouped bars of Recall@10 per model on the cold, long-tail and repeat slices."""
    present = _present_slices(records)
    if not present:
        raise ValueError("no records with a non-empty cold, long-tail or repeat slice")
    models = _main_models(records)
    figure, (ax,) = _figure(title)
    width = 0.8 / len(models)
    centres = np.arange(len(present))
    for i, (model, runs) in enumerate(models.items()):
        stats = [_mean_std(r["slices"][name]["recall@10"] for r in runs) for name in present]
        means, stds = zip(*stats, strict=True)
        bars = ax.bar(
            centres - 0.4 + width * (i + 0.5),
            means,
            width,
            color=_colour(i),
            yerr=stds if len(runs) > 1 else None,
            capsize=3,
            label=f"{model} ({_seeds(runs)})",
        )
        ax.bar_label(bars, fmt="%.3f", fontsize=8, rotation=90, padding=3)
    ax.set_xticks(centres, [f"{SLICES[name]}\n(n = {n:,} queries)" for name, n in present.items()])
    ax.set(ylabel="Recall@10 on the slice", xlabel="slice of the test queries")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.12)  # room for the value labels
    ax.grid(axis="y", alpha=0.3)
    figure.legend(loc="outside right upper", title="model")
    return _save(figure, path)


def ablation_bars(records: Sequence[dict], path: str | Path, title: str) -> Path:
    """NDCG@10 of full STARS, its "stars-*" ablations and SASRec: horizontal bars, sorted,
    with full STARS as a vertical reference line."""
    groups = {
        m: runs
        for m, runs in _by_model(records).items()
        if m in ("stars", "sasrec") or _is_ablation(m)
    }
    if not any(_is_ablation(m) for m in groups):
        raise ValueError("no STARS ablation records (models named stars-*)")
    stats = {m: _mean_std(r["metrics"]["ndcg@10"] for r in runs) for m, runs in groups.items()}
    order = sorted(stats, key=lambda m: np.nan_to_num(stats[m][0], nan=-1.0))  # best on top
    kinds = {"stars": ("full STARS", 0), "sasrec": ("SASRec (ID only)", 1)}
    figure, (ax,) = _figure(title)
    means = np.array([stats[m][0] for m in order])
    colours = [_colour(kinds.get(m, ("", 7))[1]) for m in order]
    ax.barh(order, means, color=colours)
    for y, m in enumerate(order):
        mean, std = stats[m]
        if len(groups[m]) > 1:
            ax.errorbar(mean, y, xerr=std, color="black", capsize=5)
        label = f"{mean:.4f}" + (f" ± {std:.4f}" if len(groups[m]) > 1 else "")
        ax.annotate(label, (mean + std, y), xytext=(6, 0), textcoords="offset points", va="center")
    from matplotlib.patches import Patch

    handles = [Patch(color=_colour(c), label=name) for m, (name, c) in kinds.items() if m in stats]
    handles.append(Patch(color=_colour(7), label="ablation (stars-no-*)"))
    if "stars" in stats:
        handles.append(ax.axvline(stats["stars"][0], color="black", linestyle="--"))
        handles[-1].set_label("full STARS NDCG@10")
    ax.legend(handles=handles, loc="lower right")
    ax.set(xlabel="NDCG@10 (mean ± std over seeds)", ylabel="model")
    ax.set_xlim(0, max(np.nanmax(means), 1e-9) * 1.25)
    ax.grid(axis="x", alpha=0.3)
    return _save(figure, path)


def _minor_label(value: float, _position) -> str:
    """Plain-number labels at 2, 3 and 5 times a power of ten (log axes)."""
    return f"{value:g}" if round(value / 10 ** np.floor(np.log10(value))) in (2, 3, 5) else ""


def latency_cdf(latencies_ms: Mapping[str, Sequence[float]], path: str | Path, title: str) -> Path:
    """Empirical CDF of per-request latency, one curve per filter, p50 and p99 marked."""
    from matplotlib.ticker import FuncFormatter

    figure, (ax,) = _figure(title)
    for i, (name, latencies) in enumerate(latencies_ms.items()):
        values = np.sort(np.asarray(latencies, np.float64))
        if len(values) == 0:
            continue
        share = np.arange(1, len(values) + 1) / len(values)
        p50, p99 = np.percentile(values, [50, 99])
        label = f"{name} (n = {len(values):,}): p50 {p50:.2f} ms, p99 {p99:.2f} ms"
        ax.step(values, share, where="post", color=_colour(i), linewidth=2, label=label)
        ax.plot([p50, p99], [0.5, 0.99], "o", color=_colour(i), markersize=8)
    for level in (0.5, 0.99):
        ax.axhline(level, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(_minor_label))
    ax.set(xlabel="latency per request (ms, log scale)", ylabel="share of requests (CDF)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", title="filter (dots: p50, p99)")
    return _save(figure, path)


def scaling_loglog(rows: Sequence[dict], path: str | Path, title: str) -> Path:
    """Training time per epoch and peak memory against the events (at the fewest items)
    and the items (at the fewest events) on log-log axes, each line with its fitted slope
    (the exponent of the growth). `rows`: the training-throughput benchmark's synthetic
    runs ({"events", "items", "train_s", "epochs", "peak_rss_mib"})."""
    from matplotlib.ticker import FuncFormatter

    figure, axes = _figure(title, ncols=2)
    fewest = {key: min(row[key] for row in rows) for key in ("events", "items")}
    sweeps = {
        f"events (items = {fewest['items']:,})": ("events", "items"),
        f"items (events = {fewest['events']:,})": ("items", "events"),
    }
    panels = [
        ("seconds per epoch", lambda r: r["train_s"] / r["epochs"]),
        ("peak memory (GiB, RSS)", lambda r: r["peak_rss_mib"] / 1024),
    ]
    for ax, (label, value) in zip(axes, panels, strict=True):
        for i, (name, (swept, fixed)) in enumerate(sweeps.items()):
            points = sorted((r[swept], value(r)) for r in rows if r[fixed] == fewest[fixed])
            if len(points) < 2:
                continue
            x, y = np.array(points, dtype=np.float64).T
            slope = np.polyfit(np.log(x), np.log(y), 1)[0]
            line = f"against {name}: slope {slope:.2f}"
            ax.plot(x, y, marker=MARKERS[i], color=_colour(i), linewidth=2, label=line)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(
            FuncFormatter(lambda v, p: f"{v:,.0f}" * bool(_minor_label(v, p)))
        )
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
        ax.set(xlabel="events or items (log scale)", ylabel=f"{label} (log scale)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="upper left")
    return _save(figure, path)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._]+", "-", str(text)).strip("-")


def difference_bars(rows: Sequence[dict], path: str | Path, title: str) -> Path:
    """Each model's paired difference to the strongest baseline (`comparisons` rows of one
    cell) as a dot with its 95% interval, the minimal detectable difference shaded."""
    if not rows:
        raise ValueError("no comparison rows")
    rows = sorted(rows, key=lambda r: r["mean_difference"])
    figure, (ax,) = _figure(title)
    mdd = rows[0]["minimal_detectable_difference"]
    ax.axvspan(-mdd, mdd, color="grey", alpha=0.15, label=f"± MDD ({mdd:.4f})")
    ax.axvline(0.0, color="black", linewidth=1)
    for y, row in enumerate(rows):
        low, mean, high = row["low"], row["mean_difference"], row["high"]
        colour = _colour(2 if low > 0 else 3 if high < 0 else 7)  # win / loss / level
        ax.errorbar(mean, y, xerr=[[mean - low], [high - mean]], fmt="o", color=colour, capsize=5)
        ax.annotate(
            f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]",
            (high, y),
            xytext=(6, 0),
            textcoords="offset points",
            va="center",
        )
    ax.set_yticks(range(len(rows)), [row["model"] for row in rows])
    ax.set(xlabel=f"{rows[0]['metric']} difference to {rows[0]['baseline']} (paired, 95% BCa)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right")
    return _save(figure, path)


def write_figures(
    records: Sequence[dict],
    directory: str | Path,
    stem: str,
    comparisons: Sequence[dict] = (),
) -> list[Path]:
    """The figures that apply to each (dataset, protocol) of `records` (and of their
    `comparisons` rows), written into `directory` as `{stem}-{dataset}-{protocol}-{kind}.png`;
    returns their paths."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for record in records:
        groups.setdefault((record["dataset"], record["protocol"]), []).append(record)
    paths = []
    for (dataset, protocol), group in groups.items():
        prefix = Path(directory) / f"{_slug(stem)}-{_slug(dataset)}-{_slug(protocol)}"
        name = f"{dataset}, {protocol}"
        paths.append(
            metric_vs_k(group, f"{prefix}-metric-vs-k.png", f"{name}: Recall@K and NDCG@K")
        )
        if _present_slices(group):
            title = f"{name}: Recall@10 on the hard slices"
            paths.append(slice_bars(group, f"{prefix}-slices.png", title))
        if any(_is_ablation(r["model"]) for r in group):
            title = f"{name}: STARS ablations, NDCG@10"
            paths.append(ablation_bars(group, f"{prefix}-ablations.png", title))
        rows = [r for r in comparisons if (r["dataset"], r["protocol"]) == (dataset, protocol)]
        if rows:
            title = f"{name}: difference to the strongest baseline"
            paths.append(difference_bars(rows, f"{prefix}-differences.png", title))
    return paths


def markdown_images(paths: Sequence[Path], relative_to: str | Path) -> str:
    """Markdown image links to `paths`, relative to the directory `relative_to`."""
    lines = []
    for path in paths:
        kind = next((KINDS[k] for k in KINDS if path.stem.endswith(k)), path.stem)
        link = Path(os.path.relpath(path, relative_to)).as_posix()
        lines.append(f"![{path.stem}: {kind}]({link})")
    return "\n\n".join(lines)
