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

import logging
from pathlib import Path

from starsrec.data.baskets import BasketTargets
from starsrec.data.interactions import EventLog, Queries
from starsrec.data.splits import BasketSplit, Split
from starsrec.evaluation.evaluate import EvaluationConfig, evaluate
from starsrec.evaluation.intervals import paired_difference
from starsrec.experiments.cells import save_by_cell_and_seed, stars_on_cell
from starsrec.experiments.report import targets
from starsrec.recommender import Recommender, TrainingData

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
    description = __doc__.split("\n")[0]
    args, model, data, split = stars_on_cell(description, RESULTS / "new_item_slots.json")
    rows = slot_rows(model, data, split)
    cell = f"{args.dataset}/{args.protocol}"
    after = EvaluationConfig.new_item_slots_after
    record = {"cell": cell, "seed": model.config.seed, "after": after, "rows": rows}
    stored = save_by_cell_and_seed(args.out, record)
    print(table(stored))


if __name__ == "__main__":
    main()
