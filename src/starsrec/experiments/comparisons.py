"""Paired comparisons of models on the same test queries (issue 17, item 4).

A quality claim here is a paired difference: per (dataset, protocol), every model's per-query
metric minus that of the strongest baseline (the baseline with the highest mean), with its
95% bootstrap interval and the cell's minimal detectable difference
(`starsrec.evaluation.intervals`). A seeded model's per-query values are first averaged over
its seeds, so the interval is over test queries and the seed spread stays beside it in the
main table. A "win" is an interval that excludes 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from starsrec.baselines import BASELINES
from starsrec.evaluation.intervals import paired_difference

METRIC = "ndcg@10"


def per_query_frame(records: Sequence[dict]) -> pd.DataFrame:
    """One row per (dataset, protocol, model, seed, query) with every per-query metric."""
    frames = []
    for record in records:
        values = record.get("per_query")
        if not values:
            continue
        frame = pd.DataFrame({name: np.asarray(v, dtype=np.float64) for name, v in values.items()})
        frame.insert(0, "query", np.arange(len(frame)))
        for column in ("seed", "model", "protocol", "dataset"):
            frame.insert(0, column, record[column])
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def comparisons(records: Sequence[dict], metric: str = METRIC, seed: int = 0) -> list[dict]:
    """Each model's paired difference in `metric` to the strongest baseline of its cell."""
    return frame_comparisons(per_query_frame(records), metric, seed)


def frame_comparisons(frame: pd.DataFrame, metric: str = METRIC, seed: int = 0) -> list[dict]:
    """`comparisons` of a `per_query_frame` (as stored in Parquet)."""
    rows: list[dict] = []
    if frame.empty:
        return rows
    for (dataset, protocol), cell in frame.groupby(["dataset", "protocol"], sort=False):
        # (Q,) per model: the per-query metric averaged over the model's seeds
        by_model = {
            model: runs.groupby("query")[metric].mean().to_numpy()
            for model, runs in cell.groupby("model", sort=False)
        }
        baselines = {m: float(v.mean()) for m, v in by_model.items() if m in BASELINES}
        if not baselines:
            continue
        strongest = max(baselines, key=lambda m: baselines[m])
        for model, values in by_model.items():
            if model == strongest:
                continue
            difference = paired_difference(values, by_model[strongest], seed=seed)
            rows.append(
                {"dataset": dataset, "protocol": protocol, "model": model}
                | {"baseline": strongest, "baseline_mean": float(baselines[strongest])}
                | {"metric": metric}
                | difference
            )
    return rows


def comparison_table(rows: Sequence[dict]) -> str:
    """Markdown: each model's difference to the strongest baseline [95% interval], the
    cell's minimal detectable difference (also as a share of the baseline's mean) and
    whether the interval excludes 0."""
    header = ["dataset", "protocol", "model", "vs", "difference [95% interval]", "MDD", "win"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        difference, mdd = row["mean_difference"], row["minimal_detectable_difference"]
        interval = f"{difference:+.4f} [{row['low']:+.4f}, {row['high']:+.4f}]"
        verdict = ("yes" if difference > 0 else "no: worse") if row["excludes_zero"] else "-"
        share = mdd / row["baseline_mean"] if row["baseline_mean"] else float("nan")
        cells = [row["dataset"], row["protocol"], row["model"], row["baseline"], interval]
        cells += [f"{mdd:.4f} ({share:.0%})", verdict]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(rows: Sequence[dict]) -> str:
    """One paragraph for the top of a report: which model is best on this data by the
    comparisons' metric, by how much against the strongest baseline, with its interval."""
    if not rows:
        return ""
    metric, baseline, level = rows[0]["metric"], rows[0]["baseline"], rows[0]["baseline_mean"]
    best = max(rows, key=lambda r: r["mean_difference"])
    interval = f"{best['mean_difference']:+.4f} [{best['low']:+.4f}, {best['high']:+.4f}]"
    if best["low"] > 0:
        return (
            f"**{best['model']} is best** on {metric}: {interval} against the strongest "
            f"baseline, {baseline} ({level:.4f}); the 95% interval excludes 0."
        )
    if best["high"] >= 0:
        return (
            f"**No model is shown better than {baseline}** ({metric} {level:.4f}): the closest, "
            f"{best['model']}, differs by {interval}, an interval that includes 0."
        )
    return (
        f"**{baseline} is best** on {metric} ({level:.4f}): every other model is behind it, "
        f"the closest, {best['model']}, by {interval}."
    )
