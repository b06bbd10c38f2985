"""Item parameters that scale (issue 21, item 2): where STARS's per-item residual lives,
decided on validation; and other training choices (item 3), decided the same way.

    python benchmarks/item_parameters.py                      # Online Retail next-basket, seed 0
    python benchmarks/item_parameters.py --dataset movielens-100k --protocol leave-one-out \\
        --seeds 0,1,2

Each variant is STARS with its default config but for where the residual delta_i lives:
"text" (the paper's: added to the text embedding before the projection, text-width rows),
"width" (added to the token after the projection, model-width rows), "width-rowwise" (the
same with the item tables trained by row-wise Adagrad, one optimiser value per item row, at
the default learning rate or 0.05) and "none" (no residual, the stars-no-delta ablation);
"default" is STARS's config as it stands (training choices measured against it and not kept,
length-bucketed batches and a learning rate decayed on a plateau, are in docs/benchmarks.md
with the commits that ran them). Each is trained on the cell's training events (epochs by
its own early stopping) and measured on validation only: NDCG@10 over every validation
query. This script computes no test number, so what it decides is decided on validation.
Beside it: the Recall@20 of validation targets without training events (cold: new products)
and of the others (warm), training events/s, and the item parameters (the tensors with a row
per item): values per item, and GB per million items for the parameters with their
optimiser's state, what `fit` allocates for them. Writes
benchmarks/results/item_parameters.json (merged by cell, variant and seed) and prints a
table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import time
from pathlib import Path

import numpy as np

from starsrec.data.loaders import prepare
from starsrec.data.splits import split_dataset
from starsrec.evaluation.evaluate import EvaluationConfig, evaluate
from starsrec.experiments.report import (
    machine_description,
    make_model,
    source_revision,
    training_data,
)
from starsrec.recommender import TrainingData
from starsrec.stars.recommender import StarsRecommender

RESULTS = Path(__file__).parent / "results"
ADAMW = {"train.item_optimizer": "adamw", "train.item_learning_rate": None}
ROWWISE = {"model.delta_space": "width", "train.item_optimizer": "rowwise-adagrad"}
VARIANTS = {
    "text": ("stars", ADAMW | {"model.delta_space": "text"}),
    "width": ("stars", ADAMW | {"model.delta_space": "width"}),
    "width-rowwise": ("stars", ROWWISE | {"train.item_learning_rate": None}),
    "width-rowwise-lr0.05": ("stars", ROWWISE | {"train.item_learning_rate": 0.05}),
    "none": ("stars-no-delta", ADAMW),
    "default": ("stars", {}),
}
logger = logging.getLogger("item-parameters-benchmark")


def item_values(model: StarsRecommender) -> tuple[int, int]:
    """(parameter values, optimiser state values) per catalogue item: the trained tensors
    with one row per item slot, and what their optimiser keeps for them (AdamW two moments
    per value; row-wise Adagrad one accumulator per row)."""
    network = model._fitted_model()
    rows = model._fitted_catalogue().size + 1  # the padding slot too
    tables = [p for p in network.parameters() if p.ndim and p.shape[0] == rows]
    values = sum(int(np.prod(p.shape[1:])) for p in tables)
    if model.config.train.item_optimizer == "adamw":
        return values, 2 * values
    return values, len(tables)


def measure(
    variant: str, seed: int, data: TrainingData, threads: int, base: dict | None = None
) -> dict:
    """Train one variant and measure it on validation (see the module doc); `base`: config
    settings by dotted path under the variant's own (the tests' tiny model)."""
    name, settings = VARIANTS[variant]
    model = make_model(name, seed, threads, (base or {}) | settings)
    assert isinstance(model, StarsRecommender)
    started = time.perf_counter()
    model.fit(data)
    train_s = time.perf_counter() - started
    assert data.validation is not None and data.validation_targets is not None
    config = EvaluationConfig(data.exclude_seen, progress=False)
    result = evaluate(model, data.validation, data.validation_targets, data.train, config)
    state = model.training_state
    assert state is not None
    history = state.history
    values, state_values = item_values(model)
    return {
        "variant": variant,
        "seed": seed,
        "validation_ndcg@10": result["metrics"]["ndcg@10"],
        # new products: how often a target nobody bought in training is found, against the rest
        "validation_cold_recall@20": result["slices"]["cold"]["recall@20"],
        "validation_warm_recall@20": result["slices"]["warm"]["recall@20"],
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "events_per_s": sum(h["events"] for h in history) / sum(h["seconds"] for h in history),
        "train_s": train_s,
        "item_values": values,
        "optimizer_values": state_values,
        "gb_per_million_items": (values + state_values) * 4 * 1e6 / 1e9,  # float32
    }


def table(records: list[dict]) -> str:
    """Markdown: one row per cell and variant, means over seeds."""
    lines = [
        "| cell | variant | seeds | validation NDCG@10 | cold / warm Recall@20 | best epoch | "
        "events/s | values per item (+ optimiser) | GB per 1M items |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["cell"], r["variant"]), []).append(r)
    for (cell, variant), runs in groups.items():
        ndcg = [r["validation_ndcg@10"] for r in runs]
        spread = f" ± {np.std(ndcg, ddof=1):.4f}" if len(ndcg) > 1 else ""
        # older records lack the slices: "–"
        cold = np.mean([r.get("validation_cold_recall@20", np.nan) for r in runs])
        warm = np.mean([r.get("validation_warm_recall@20", np.nan) for r in runs])
        slices = "–" if np.isnan(warm) else f"{cold:.3f} / {warm:.3f}"
        lines.append(
            f"| {cell} | {variant} | {len(runs)} | {np.mean(ndcg):.4f}{spread} | {slices} | "
            f"{np.mean([r['best_epoch'] for r in runs]):.1f} | "
            f"{np.mean([r['events_per_s'] for r in runs]):,.0f} | {runs[0]['item_values']} "
            f"(+ {runs[0]['optimizer_values']}) | "
            f"{runs[0]['gb_per_million_items']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="online-retail")
    parser.add_argument("--protocol", default="next-basket")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "item_parameters.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variant(s) {sorted(unknown)}; choose from {', '.join(VARIANTS)}")

    dataset = prepare(args.dataset)
    split = split_dataset(dataset, args.protocol)
    data = training_data(dataset, split, dataset.exclude_seen)
    cell = f"{args.dataset}/{args.protocol}"
    stored = json.loads(args.out.read_text()) if args.out.exists() else []
    for seed in (int(s) for s in args.seeds.split(",")):
        for variant in args.variants.split(","):
            record = measure(variant, seed, data, args.threads) | {
                "cell": cell,
                "date": dt.date.today().isoformat(),
                "machine": machine_description(),
                "commit": source_revision(),
            }
            print(json.dumps(record), flush=True)
            same = (cell, variant, seed)
            stored = [r for r in stored if (r["cell"], r["variant"], r["seed"]) != same]
            stored.append(record)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(stored, indent=2) + "\n")  # kept run by run
    print(table(stored))


if __name__ == "__main__":
    main()
