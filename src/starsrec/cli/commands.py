"""The `starsrec` command: its parser, the data, train and evaluate commands, and `main`.

starsrec data prepare movielens-100k --out data/movielens-100k
starsrec evaluate data/movielens-100k --protocol leave-one-out --out reports/ml
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from starsrec import __version__
from starsrec.baselines import BASELINES
from starsrec.cli import recommend, serving
from starsrec.data.dataset import DataError, format_summary, load_prepared, save_prepared, summarize
from starsrec.data.loaders import DATASETS, prepare
from starsrec.data.splits import PROTOCOLS, default_protocol
from starsrec.data.weekly import format_weekly, weekly_summary
from starsrec.experiments.artifact import (
    evaluate_artifact,
    is_artifact,
    load_config,
    train_artifact,
)
from starsrec.experiments.report import MODEL_NAMES, read_report, run_models, write_report
from starsrec.recommender import NEW_TO
from starsrec.stars import distributed
from starsrec.stars.device import resolve_device
from starsrec.stars.variants import VARIANTS

PROTOCOL_HELP = "default: next-basket (shop logs; last-basket without cuts), else leave-one-out"
EXAMPLES = {
    "prepare": "example: starsrec data prepare online-retail --out data/online-retail",
    "summary": "example: starsrec data summary path/to/my-shop (then set temporal_cuts)",
    "train": (
        "example: starsrec train data/movielens-100k --set model.dim=64 --set train.epochs=20 "
        "--out artifacts/movielens\n\n"
        "data parallel on this machine (2 processes, gloo on CPU):\n"
        "  starsrec train data/movielens-100k --nproc 2 --out artifacts/movielens\n"
        "several machines: start the same torchrun command on every node (paths on a shared "
        "filesystem):\n"
        "  torchrun --nnodes 4 --nproc-per-node 8 --rdzv-id stars1 --rdzv-backend c10d \\\n"
        "    --rdzv-endpoint HEAD_NODE:29500 -m starsrec.cli train data/shop \\\n"
        "    --checkpoints checkpoints/shop --out artifacts/shop\n"
        "resuming from --checkpoints is bit-exact at the same world size on the CPU, and valid "
        "at another world size or device\n\n"
        "on GPUs (--device auto takes one when torch sees it; NCCL between GPU ranks):\n"
        "  starsrec train data/shop --device cuda --nproc 8 --out artifacts/shop"
    ),
    "evaluate": (
        "example: starsrec evaluate data/movielens-100k --protocol leave-one-out "
        "--models popularity,lambdamart --out reports/movielens"
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The `starsrec` argument parser: data prepare|summary, train, evaluate, index, serve
    and recommend."""
    parser = argparse.ArgumentParser(prog="starsrec", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"starsrec {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="prepare datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    prep = data_commands.add_parser(
        "prepare",
        help="turn a known dataset or your own files into Parquet tables",
        epilog=EXAMPLES["prepare"],
    )
    prep.add_argument(
        "source",
        help=f"a known dataset ({', '.join(DATASETS)}) or a directory with events and "
        "items files (CSV or Parquet)",
    )
    prep.add_argument("--out", required=True, help="directory to write the Parquet tables to")
    data_commands.add_parser(
        "summary",
        help="events, users and baskets per week: for choosing temporal_cuts",
        epilog=EXAMPLES["summary"],
    ).add_argument("source", help="a known dataset or a directory with your own files")

    train = commands.add_parser(
        "train",
        help="train STARS into an artifact directory",
        epilog=EXAMPLES["train"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("data_dir", help="a directory written by `starsrec data prepare`")
    train.add_argument("--config", help="a JSON file of StarsConfig fields (model, train, ...)")
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. model.dim=128 or train.epochs=10 (repeatable)",
    )
    train.add_argument("--protocol", choices=PROTOCOLS, help=PROTOCOL_HELP)
    train.add_argument(
        "--variant",
        default="stars",
        choices=list(VARIANTS),
        metavar="VARIANT",
        help=f"stars (the default), sasrec or an ablation: {', '.join(VARIANTS)}",
    )
    train.add_argument("--out", required=True, help="the artifact directory to write")
    train.add_argument(
        "--checkpoints",
        metavar="DIR",
        help="checkpoint every epoch into DIR and resume from the checkpoint found there",
    )
    train.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="train data-parallel with N local processes (re-launches itself under torchrun)",
    )
    serving.add_device_argument(train, "train on (sets train.device; bf16 autocast on a GPU)")

    evaluate = commands.add_parser(
        "evaluate",
        help="evaluate a trained artifact, or fit baselines on a prepared dataset, and "
        "report full-ranking metrics",
        epilog=EXAMPLES["evaluate"],
    )
    evaluate.add_argument(
        "data_dir", help="an artifact from `starsrec train`, or a prepared dataset directory"
    )
    evaluate.add_argument("--protocol", choices=PROTOCOLS, help=PROTOCOL_HELP)
    evaluate.add_argument(
        "--models",
        default=",".join(BASELINES),
        help=f"comma-separated models (default: the baselines); any of {', '.join(MODEL_NAMES)}",
    )
    seen = evaluate.add_mutually_exclusive_group()
    seen.add_argument(
        "--exclude-seen",
        dest="exclude_seen",
        action="store_true",
        default=None,
        help="never rank items already in the user's history",
    )
    seen.add_argument(
        "--allow-seen",
        dest="exclude_seen",
        action="store_false",
        help="let already-seen items be recommended (default unless the dataset says otherwise)",
    )
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument(
        "--new-item-slots",
        type=int,
        default=0,
        metavar="N",
        help="keep N places after the first 10 for the best new items, as `starsrec serve "
        "--new-item-slots` does (default 0: the model's own ranking)",
    )
    evaluate.add_argument(
        "--new-to",
        choices=NEW_TO,
        default="catalogue",
        help="which items the places are for: new to the catalogue (without training events; "
        "the default) or new to the shopper (not in their history: explore places)",
    )
    serving.add_device_argument(evaluate, "score an artifact on")
    compare = "a baselines report on the same test queries, for the artifact's paired intervals"
    evaluate.add_argument("--compare-with", metavar="REPORT_DIR", help=compare)
    evaluate.add_argument("--out", default="reports/latest", help="report directory")

    serving.add_parsers(commands)
    recommend.add_parser(commands)
    return parser


def run(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    """Run the parsed command and return its exit status (`argv` is re-used to re-launch under
    torchrun)."""
    if args.command == "data":
        dataset = prepare(args.source)
        if args.data_command == "summary":
            print(format_weekly(weekly_summary(dataset)))
            return 0
        out = save_prepared(dataset, args.out)
        print(format_summary(summarize(dataset)))
        print(f"\nwrote {out}/")
        return 0
    if args.command == "train":
        if args.nproc > 1 and not distributed.launched_by_torchrun():
            return distributed.relaunch(args.nproc, without_option(argv, "--nproc"))
        overrides = [*args.overrides, *([f"train.device={args.device}"] if args.device else [])]
        config = load_config(args.config, overrides)
        device = resolve_device(config.train.device)  # refuses a GPU torch cannot see
        rank = distributed.init_from_environment(use_cuda=device.type == "cuda")
        try:
            out = train_artifact(
                args.data_dir, args.out, config, args.protocol, args.variant, args.checkpoints
            )
        finally:
            distributed.shutdown()
        if rank.is_main:
            print(f"wrote {out}/")
        return 0
    if args.command == "evaluate" and args.new_item_slots < 0:
        raise ValueError(f"--new-item-slots must be >= 0, got {args.new_item_slots}")
    if args.command == "evaluate" and is_artifact(args.data_dir):
        record = evaluate_artifact(
            args.data_dir,
            device=args.device or "auto",
            new_item_slots=args.new_item_slots,
            new_to=args.new_to,
        )
        title = f"{record['dataset']}, {record['protocol']}, artifact {args.data_dir}"
        earlier = read_report(args.compare_with, like=record) if args.compare_with else []
        report = write_report([*earlier, record], args.out, title)
        print(f"wrote {report} and {report.parent / 'results.json'}")
        return 0
    if args.command == "evaluate":
        dataset = load_prepared(args.data_dir)
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = [m for m in models if m not in MODEL_NAMES]
        if unknown:
            raise DataError(
                f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODEL_NAMES)}"
            )
        protocol = args.protocol or default_protocol(dataset)
        records = run_models(
            dataset,
            protocol,
            models,
            (args.seed,),
            args.exclude_seen,
            new_item_slots=args.new_item_slots,
            new_to=args.new_to,
        )
        title = f"{dataset.name}, {protocol}"
        report = write_report(records, args.out, title)
        print(f"wrote {report} and {report.parent / 'results.json'}")
        return 0
    if args.command == "index":
        return serving.run_index(args, without_option(argv, "--nproc"))
    if args.command == "serve":
        return serving.run_serve(args)
    if args.command == "recommend":
        return recommend.run(args)
    raise AssertionError(f"unhandled command {args.command}")


def without_option(argv: Sequence[str], option: str) -> list[str]:
    """`argv` less `option VALUE` / `option=VALUE` (torchrun would take `--nproc` for its
    own `--nproc-per-node`, and the workers must not re-launch themselves)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(f"{option}="):
            kept.append(arg)
    return kept


def main(argv: Sequence[str] | None = None) -> int:
    """The console entry point: parse `argv` (default sys.argv), log, run; returns the exit status,
    2 with a one-line error for bad input unless --debug."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    # Under torchrun only rank 0 reports progress; the other ranks speak up on problems.
    quiet = int(os.environ.get("RANK", "0")) > 0
    process = " [%(process)d]" if args.command == "serve" else ""  # which worker says it
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING if quiet else logging.INFO,
        format=f"%(asctime)s %(levelname)s{process} %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # faiss logs every CPU-specific build it fails to find at INFO: noise to a user.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        return run(args, argv)
    except (DataError, ValueError, FileNotFoundError) as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        print("hint: run with --debug for the full traceback", file=sys.stderr)
        return 2
