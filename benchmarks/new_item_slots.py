"""Places kept for new products (issue 18, new products): what they cost and what they buy.

    python benchmarks/new_item_slots.py                      # Online Retail next-basket, seed 0
    python benchmarks/new_item_slots.py --artifact artifacts/shop  # a model trained already

STARS is trained once on the cell (or loaded from `--artifact`, a model trained on the same
cell), then evaluated by the evaluator itself (`EvaluationConfig.new_item_slots`, as
`starsrec evaluate --new-item-slots` and `starsrec serve --new-item-slots` place them) with
0, 1, 2, 3 places kept after the first 10 for the best items without training events. Each
row: NDCG@10, Recall@20, and the Recall@20 of cold targets (no training events) and of warm
ones, each the mean over the queries with such a target, on validation and on test, with the
paired 95% interval of each count's per-query NDCG@10 and Recall@20 minus no places' on
test. The count is a shop's choice between today's sales and new products being seen, not a
model setting: nothing is chosen here. Writes benchmarks/results/new_item_slots.json (merged
by cell and seed) and prints a table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
from pathlib import Path

import torch

from starsrec.data.baskets import BasketTargets
from starsrec.data.interactions import EventLog, Queries
from starsrec.data.loaders import prepare
from starsrec.data.splits import BasketSplit, Split, split_dataset
from starsrec.evaluation.evaluate import EvaluationConfig, evaluate
from starsrec.evaluation.intervals import paired_difference
from starsrec.experiments.report import (
    machine_description,
    make_model,
    source_revision,
    targets,
    training_data,
)
from starsrec.recommender import Recommender, TrainingData
from starsrec.stars.recommender import StarsRecommender

RESULTS = Path(__file__).parent / "results"
COUNTS = (0, 1, 2, 3)
METRICS = ("ndcg@10", "recall@20")
logger = logging.getLogger("new-item-slots-benchmark")


def measure(
    model: Recommender,
    queries: Queries,
    query_targets: BasketTargets,
    train: EventLog,
    exclude_seen: bool,
    count: int,
) -> dict:
    """The evaluator's numbers with `count` places kept (per-query values kept aside)."""
    config = EvaluationConfig(exclude_seen, progress=False, new_item_slots=count)
    result = evaluate(model, queries, query_targets, train, config)
    slices = result["slices"]
    return {
        **{metric: result["metrics"][metric] for metric in METRICS},
        "cold_recall@20": slices["cold"]["recall@20"],
        "cold_queries": slices["cold"]["queries"],
        "warm_recall@20": slices["warm"]["recall@20"],
        "explore_recall@20": slices["explore"]["recall@20"],
        "per_query": {metric: result["per_query"][metric] for metric in METRICS},
    }


def slot_rows(model: Recommender, data: TrainingData, split: Split | BasketSplit) -> list[dict]:
    """Per count of places (`COUNTS`): the validation and test numbers of `measure`, and on
    test the paired differences to no places."""
    assert data.validation is not None and data.validation_targets is not None
    parts = {
        "validation": (data.validation, data.validation_targets),
        "test": (split.test, targets(split, "test")),
    }
    rows: list[dict] = []
    for count in COUNTS:
        row: dict = {"count": count}
        for name, (queries, query_targets) in parts.items():
            row[name] = measure(
                model, queries, query_targets, split.train, data.exclude_seen, count
            )
            shown = {k: v for k, v in row[name].items() if k != "per_query"}
            logger.info("%d places, %s: %s", count, name, shown)
        rows.append(row)
    for row in rows[1:]:
        test, plain = row["test"], rows[0]["test"]
        test["difference"] = {
            metric: paired_difference(test["per_query"][metric], plain["per_query"][metric])
            for metric in METRICS
        }
    for row in rows:
        for name in parts:
            row[name].pop("per_query")
    return rows


def table(records: list[dict]) -> str:
    """Markdown: per cell, seed and count, validation and test, with the test intervals."""
    lines = [
        "| cell | seed | places | split | NDCG@10 | Recall@20 | cold Recall@20 | warm "
        "Recall@20 | cold / warm | NDCG@10 - no places [95%] | Recall@20 - no places [95%] |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        for row in r["rows"]:
            for split in ("validation", "test"):
                m = row[split]
                ratio = m["cold_recall@20"] / m["warm_recall@20"] if m["warm_recall@20"] else 0
                cells = [r["cell"], str(r["seed"]), str(row["count"]), split]
                cells += [f"{m['ndcg@10']:.4f}", f"{m['recall@20']:.4f}"]
                cells += [f"{m['cold_recall@20']:.3f} (n={m['cold_queries']})"]
                cells += [f"{m['warm_recall@20']:.3f}", f"{ratio:.2f}"]
                for metric in METRICS:
                    d = m.get("difference", {}).get(metric)
                    cells.append(
                        f"{d['mean_difference']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"
                        if d
                        else ""
                    )
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="online-retail")
    parser.add_argument("--protocol", default="next-basket")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--artifact", type=Path, help="a STARS model trained on this cell")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "new_item_slots.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)

    dataset = prepare(args.dataset)
    split = split_dataset(dataset, args.protocol)
    data = training_data(dataset, split, dataset.exclude_seen)
    if args.artifact is not None:
        model = StarsRecommender.load(args.artifact)
    else:
        model = make_model("stars", args.seed, args.threads, {}).fit(data)
    rows = slot_rows(model, data, split)
    cell = f"{args.dataset}/{args.protocol}"
    after = EvaluationConfig.new_item_slots_after
    record = {"cell": cell, "seed": model.config.seed, "after": after, "rows": rows}
    record |= {
        "date": dt.date.today().isoformat(),
        "machine": machine_description(),
        "commit": source_revision(),
    }
    stored = json.loads(args.out.read_text()) if args.out.exists() else []
    stored = [r for r in stored if (r["cell"], r["seed"]) != (cell, record["seed"])]
    stored.append(record)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(stored, indent=2, default=lambda v: v.item()) + "\n")
    print(table(stored))


if __name__ == "__main__":
    main()
