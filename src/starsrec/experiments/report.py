"""Run models in the evaluation harness and report: JSON records and Markdown tables.

One record per (dataset, protocol, model, seed), in the format benchmarks/quality.json
keeps: {"dataset", "protocol", "model", "seed", "metrics", "slices", "train_s", "eval_s",
"date", "machine", ...}. The CLI's `evaluate` and `benchmarks/quality.py` share this code.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import logging
import os
import platform
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from starsrec.baselines import BASELINES
from starsrec.data.baskets import BasketSplit, BasketTargets
from starsrec.data.dataset import DataError, Dataset
from starsrec.data.splits import Split, split_dataset
from starsrec.evaluation.evaluate import EvaluationConfig, evaluate, validation_metric
from starsrec.experiments.comparisons import (
    comparison_table,
    comparisons,
    per_query_frame,
    verdict,
)
from starsrec.experiments.plots import markdown_images, write_figures
from starsrec.recommender import Recommender, TrainingData
from starsrec.stars.recommender import StarsConfig
from starsrec.stars.train import TrainConfig
from starsrec.stars.variants import VARIANTS, stars_variant

logger = logging.getLogger(__name__)

# Recall and Hit coincide when a query has one target (leave-one-out, temporal).
TABLE_METRICS = ("recall@10", "ndcg@10", "hit@10", "mrr@10", "recall@20", "coverage@10")
TABLE_SLICES = (
    ("repeat", "recall@10"),
    ("explore", "recall@10"),
    ("explore", "recall@20"),
    ("cold", "recall@10"),
)


def machine_description() -> str:
    """A short description of the machine numbers were measured on."""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages / 2**30:.0f} GiB"
    except (ValueError, OSError, AttributeError):
        memory = ""
    cpu = platform.processor() or platform.machine()
    python = platform.python_version()
    return f"{os.cpu_count()} cores{memory}, {cpu}, {platform.system()}, Python {python}"


MODEL_NAMES = (*BASELINES, *VARIANTS)


def source_revision() -> str:
    """The git commit the code ran at ("+dirty" when src/ has uncommitted changes)."""
    here = Path(__file__).resolve().parent  # inside the checkout; ":/src" is its top's src
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "-uno", "--", ":/src"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def make_model(
    name: str, seed: int, threads: int = 1, settings: Mapping[str, Any] | None = None
) -> Recommender:
    """A model by name with its default config (and `seed` and `threads` where it has them):
    a baseline or a STARS variant (full STARS, ID-only SASRec, the ablations). `threads` is
    the CPU threads training may use: 1 when several jobs share the cores. `settings`
    overrides config fields by dotted path, e.g. {"train.learning_rate": 1e-3}."""
    if name in VARIANTS:
        config = StarsConfig(seed=seed, train=TrainConfig(threads=threads))
        return stars_variant(name, with_settings(config, settings or {}))
    if name not in BASELINES:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")
    model_class = BASELINES[name]
    config = model_class.config_class()
    fields = {f.name for f in dataclasses.fields(config)}
    defaults = {"seed": seed, "threads": threads}
    config = dataclasses.replace(config, **{k: v for k, v in defaults.items() if k in fields})
    return model_class(with_settings(config, settings or {}))


def with_settings(config: Any, settings: Mapping[str, Any]) -> Any:
    """`config` (a frozen dataclass) with fields replaced by dotted path ("train.epochs")."""
    for path, value in settings.items():
        head, _, rest = path.partition(".")
        if not any(f.name == head for f in dataclasses.fields(config)):
            raise ValueError(f"{type(config).__name__} has no field {head!r} (in {path!r})")
        inner = with_settings(getattr(config, head), {rest: value}) if rest else value
        config = dataclasses.replace(config, **{head: inner})
    return config


def is_seeded(name: str) -> bool:
    """Whether the model has randomness a seed controls (others run once)."""
    if name in VARIANTS:
        return True
    return any(f.name == "seed" for f in dataclasses.fields(BASELINES[name].config_class))


def targets(split: Split | BasketSplit, part: str) -> BasketTargets:
    """The target sets of the split's "validation" or "test" queries: whole baskets under
    a basket protocol, one item each otherwise."""
    if isinstance(split, BasketSplit):
        return getattr(split, f"{part}_targets")
    return BasketTargets.single(getattr(split, f"{part}_target"))


def training_data(dataset: Dataset, split: Split | BasketSplit, exclude_seen: bool) -> TrainingData:
    """What `fit` gets for a split of `dataset`: validation queries shaped like the test
    ones (whole baskets under a basket protocol), so models choose on the task they are
    measured on."""
    return TrainingData(
        train=split.train,
        catalogue=split.catalogue,
        country=dataset.country,
        exclude_seen=exclude_seen,
        validation=split.validation,
        validation_targets=targets(split, "validation"),
    )


def evaluation_record(
    model: Recommender,
    name: str,
    seed: int,
    dataset: Dataset,
    split: Split | BasketSplit,
    exclude_seen: bool,
    train_s: float,
    progress: bool = True,
    new_item_slots: int = 0,
    new_to: str = "catalogue",
) -> dict:
    """Evaluate a fitted model on the split's test queries: one benchmark record, holding
    also "per_query", each metric's (Q,) values (not JSON: see `write_report`).
    new_item_slots, new_to: places kept for new items (`EvaluationConfig`); the record's
    model is then named "<name> +<n> new-item slots" (new to the catalogue) or
    "<name> +<n> explore slots" (new to the shopper)."""
    config = EvaluationConfig(
        exclude_seen, progress=progress, new_item_slots=new_item_slots, new_to=new_to
    )
    if new_item_slots:
        kind = "explore" if new_to == "shopper" else "new-item"
        name = f"{name} +{new_item_slots} {kind} slots"
    started = time.perf_counter()
    test_targets = targets(split, "test")
    result = evaluate(model, split.test, test_targets, split.train, config)
    eval_s = time.perf_counter() - started
    return {"per_query": result["per_query"]} | {
        "dataset": dataset.name,
        "protocol": split.protocol,
        "model": name,
        "seed": seed,
        "metrics": result["metrics"],
        "slices": result["slices"],
        "queries": result["queries"],
        "exclude_seen": exclude_seen,
        "split": split.description,
        "diagnostics": model.diagnostics(split.test, test_targets),
        "train_s": round(train_s, 3),
        "eval_s": round(eval_s, 3),
        "date": dt.date.today().isoformat(),
        "machine": machine_description(),
        "commit": source_revision(),
    }


def run_models(
    dataset: Dataset,
    protocol: str,
    models: Sequence[str],
    seeds: Sequence[int] = (0,),
    exclude_seen: bool | None = None,
    split: Split | BasketSplit | None = None,
    progress: bool = True,
    threads: int = 1,
    tuning: Mapping[str, Mapping[str, Sequence[Any]]] | None = None,
    new_item_slots: int = 0,
    save_to: Path | None = None,
    new_to: str = "catalogue",
    places: Mapping[str, Sequence[tuple[int, str]]] | None = None,
) -> list[dict]:
    """Fit and evaluate each model on the test queries of `protocol`; one record each.

    `exclude_seen` defaults to the dataset's own rule (`Dataset.exclude_seen`);
    `threads` is what each model may train with (see `make_model`), kept in the record.
    `tuning` gives models a grid ({model: {dotted field: values}}): with the first seed each
    combination is fitted and the one with the best validation NDCG@10 (every validation
    query) is kept for every seed; the records say what was tried ("tuning") and kept
    ("settings"). Test queries play no part in the choice. With `save_to`, each fitted
    model is saved there as `<model>-seed<seed>` (what later probes load, not retrain).
    `places` ({model: [(count, new_to), ...]}) evaluates each fitted model of those names
    again with each kind of new-item places (`evaluation_record`), one more record each:
    placing is a ranking rule over the same scores, so nothing is fitted twice.
    """
    if split is None:
        split = split_dataset(dataset, protocol)
    if exclude_seen is None:
        exclude_seen = dataset.exclude_seen
    data = training_data(dataset, split, exclude_seen)
    records = []
    for name in models:
        grid = (tuning or {}).get(name, {})
        settings: dict[str, Any] = {}
        tried: list[dict] = []
        for seed in seeds if is_seeded(name) else seeds[:1]:
            started = time.perf_counter()
            if grid and not tried:
                model, settings, tried = _tuned(name, seed, threads, grid, data)
            else:
                model = make_model(name, seed, threads, settings).fit(data)
            train_s = time.perf_counter() - started
            if save_to is not None:
                model.save(save_to / f"{name}-seed{seed}")
            extra = {"settings": settings, "tuning": tried} if grid else {}
            for count, kind in [(new_item_slots, new_to), *(places or {}).get(name, ())]:
                record = evaluation_record(
                    model, name, seed, dataset, split, exclude_seen, train_s, progress, count, kind
                )
                records.append(record | {"threads": threads} | extra)
    return records


def _tuned(
    name: str,
    seed: int,
    threads: int,
    grid: Mapping[str, Sequence[Any]],
    data: TrainingData,
) -> tuple[Recommender, dict[str, Any], list[dict]]:
    """(the fitted model with the best validation NDCG@10 over `grid`, its settings, every
    combination tried with its validation NDCG@10)."""
    if data.validation is None or not len(data.validation):
        raise DataError(f"tuning {name} needs validation queries; this split has none")
    assert data.validation_targets is not None  # given with the validation queries
    best_metric, best_model, best_settings = -np.inf, None, {}
    tried = []
    for values in itertools.product(*grid.values()):
        settings = dict(zip(grid, values, strict=True))
        model = make_model(name, seed, threads, settings).fit(data)
        metric = validation_metric(
            model, data.validation, data.validation_targets, data.exclude_seen
        )
        logger.info("%s %s: validation ndcg@10 %.4f", name, settings, metric)
        tried.append({"settings": settings, "validation_ndcg@10": round(metric, 6)})
        if metric > best_metric:
            best_metric, best_model, best_settings = metric, model, settings
    if best_model is None:
        raise ValueError(f"tuning {name}: the grid {dict(grid)} has no combination")
    return best_model, best_settings, tried


def _mean_std(values: Iterable[float]) -> str:
    values = np.asarray(list(values), dtype=np.float64)
    if np.isnan(values).all():
        return "–"  # an empty slice
    if len(values) > 1:
        return f"{values.mean():.4f} ± {values.std(ddof=1):.4f}"
    return f"{values.mean():.4f}"


def markdown_table(records: Sequence[dict]) -> str:
    """One row per (dataset, protocol, model): metrics as mean ± std over seeds."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for record in records:
        groups.setdefault((record["dataset"], record["protocol"], record["model"]), []).append(
            record
        )
    metrics, slices = TABLE_METRICS, TABLE_SLICES
    header = ["dataset", "protocol", "model", "seeds", *metrics]
    header += [f"{name} {metric}" for name, metric in slices]
    header += ["train s", "eval s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (dataset, protocol, model), runs in groups.items():
        cells = [dataset, protocol, model, str(len(runs))]
        # .get: records of an older harness lack some columns ("–")
        cells += [_mean_std(r["metrics"].get(m, np.nan) for r in runs) for m in metrics]
        for name, metric in slices:
            count = runs[0]["slices"].get(name, {}).get("queries", 0)
            values = (r["slices"].get(name, {}).get(metric, np.nan) for r in runs)
            cells.append(f"{_mean_std(values)} (n={count})")
        threads = {r.get("threads", 1) for r in runs}  # older records trained with one
        train_s = f"{np.mean([r['train_s'] for r in runs]):.1f}"
        cells += [
            train_s if threads == {1} else f"{train_s} ({'/'.join(map(str, threads))} threads)"
        ]
        cells += [f"{np.mean([r['eval_s'] for r in runs]):.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(records: Sequence[dict], out_dir: str | Path, title: str) -> Path:
    """Write results.json, report.md and its figures (report-*.png, linked from report.md)
    into `out_dir`; returns the report path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = comparisons(records)
    plain = [{k: v for k, v in r.items() if k != "per_query"} for r in records]
    (out / "results.json").write_text(json.dumps(plain, indent=2) + "\n")
    per_query = per_query_frame(records)
    if not per_query.empty:  # the per-query values behind every paired interval
        per_query.to_parquet(out / "per_query.parquet", index=False, compression="zstd")
        (out / "comparisons.json").write_text(json.dumps(rows, indent=2) + "\n")
    first = plain[0] if plain else {}
    notes = [
        f"# {title}",
        "",
        *([verdict(rows), ""] if rows else []),
        f"Full ranking over the whole catalogue. Split: {first.get('split', '-')}.",
        f"Already-seen items {'excluded from' if first.get('exclude_seen') else 'allowed in'} "
        "the rankings. Slice columns: Recall@10 over the target items of that kind "
        "(n = queries holding one). Ties count by their expected rank.",
        f"Test queries: {first.get('queries', 0)}. Measured {first.get('date', '-')} on "
        f"{first.get('machine', '-')}.",
        "",
        markdown_table(plain),
        "",
    ]
    if rows:
        notes += [
            "## Differences to the strongest baseline",
            "",
            f"Paired per-query {rows[0]['metric']} differences with their 95% BCa bootstrap "
            "interval (seeded models: per-query mean over seeds); MDD: the smallest difference "
            "this test set detects with 80% power. A win needs the interval to exclude 0.",
            "",
            comparison_table(rows),
            "",
        ]
    figures = write_figures(plain, out, "report", rows)
    if figures:
        notes += ["## Figures", "", markdown_images(figures, out), ""]
    path = out / "report.md"
    path.write_text("\n".join(notes))
    return path


def read_report(out_dir: str | Path, like: dict | None = None) -> list[dict]:
    """The records a `write_report` directory holds, with their per-query values back (so a
    later report can compare new models with them, paired over the same test queries).
    like: a record they must share the dataset, protocol and test queries with (else a
    DataError that says so)."""
    out = Path(out_dir)
    if not (out / "results.json").exists():
        raise DataError(f"{out / 'results.json'} not found: is {out} a report directory?")
    records = json.loads((out / "results.json").read_text())
    fields = ("dataset", "protocol", "queries", "exclude_seen")
    for other in records:
        if like is not None and [other[f] for f in fields] != [like[f] for f in fields]:
            raise DataError(
                f"{out}: {other['model']} ran on {other['dataset']} / {other['protocol']} "
                f"({other['queries']} queries), not on {like['dataset']} / {like['protocol']} "
                f"({like['queries']}): evaluate them with the same dataset and protocol."
            )
    if not (out / "per_query.parquet").exists():
        return records
    frame = pd.read_parquet(out / "per_query.parquet").sort_values("query")
    metrics = [c for c in frame.columns if "@" in c]
    for record in records:
        mine = frame[(frame["model"] == record["model"]) & (frame["seed"] == record["seed"])]
        record["per_query"] = {m: mine[m].to_numpy() for m in metrics}
    return records
