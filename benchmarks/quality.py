"""Quality benchmark: every model on the real datasets under both protocols.

    python benchmarks/quality.py                      # everything (about 15 minutes)
    python benchmarks/quality.py --datasets movielens-100k --protocols leave-one-out
    python benchmarks/quality.py --table-only         # rewrite the table from the JSON
    python benchmarks/quality.py --models stars --threads 2   # alone on a 2-core machine

Writes (merging with what is there: a rerun replaces the same dataset/protocol/model/seed)
benchmarks/results/quality.json, a list of records {"dataset", "protocol", "model", "seed",
"metrics", "slices", "train_s", "eval_s", "date", "machine", ...}, and the Markdown table
benchmarks/results/quality.md with figures under benchmarks/results/figures/ (per dataset
and protocol: quality-*-metric-vs-k.png, -slices.png, -ablations.png; linked from the
Markdown), and prints the table. Seeded models run once per seed; deterministic ones once.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from starsrec.baselines import BASELINES
from starsrec.data.loaders import DATASETS, prepare
from starsrec.data.splits import PROTOCOLS
from starsrec.experiments.plots import markdown_images, write_figures
from starsrec.experiments.report import markdown_table, run_models

RESULTS = Path(__file__).parent / "results"


def key(record: dict) -> tuple:
    return record["dataset"], record["protocol"], record["model"], record["seed"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    parser.add_argument("--models", default=",".join(BASELINES))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads each model trains with (1 while other jobs share the cores; "
        "the machine's core count for training times of a run alone)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "quality.json")
    parser.add_argument(
        "--table-only", action="store_true", help="only rewrite the table from the JSON"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    records = json.loads(args.out.read_text()) if args.out.exists() else []
    seeds = [int(s) for s in args.seeds.split(",")]
    for name in [] if args.table_only else args.datasets.split(","):
        dataset = prepare(name)
        for protocol in args.protocols.split(","):
            new = run_models(
                dataset,
                protocol,
                args.models.split(","),
                seeds,
                progress=False,
                threads=args.threads,
            )
            replaced = {key(r) for r in new}
            records = [r for r in records if key(r) not in replaced] + new
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(records, indent=2) + "\n")  # saved as we go
    records = sorted(records, key=key)
    table = markdown_table(records)
    markdown = args.out.with_suffix(".md")
    markdown.write_text(table + "\n")
    figures = write_figures(records, args.out.parent / "figures", "quality")
    if figures:
        links = markdown_images(figures, markdown.parent)
        markdown.write_text(f"{table}\n\n## Figures\n\n{links}\n")
    print(table)
    print(f"\nwrote {markdown} and {len(figures)} figures in {args.out.parent / 'figures'}/")


if __name__ == "__main__":
    main()
