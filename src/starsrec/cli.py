"""The `starsrec` command line: the only place that prints.

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
from starsrec.data.dataset import DataError, format_summary, load_prepared, save_prepared, summarize
from starsrec.data.loaders import DATASETS, prepare
from starsrec.data.splits import PROTOCOLS
from starsrec.experiments.artifact import (
    evaluate_artifact,
    is_artifact,
    load_config,
    train_artifact,
)
from starsrec.experiments.report import MODEL_NAMES, run_models, write_report
from starsrec.stars import distributed
from starsrec.web.server import add_serve_arguments

EXAMPLES = {
    "prepare": "example: starsrec data prepare online-retail --out data/online-retail",
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
        "resuming from --checkpoints is bit-exact at the same world size and valid at another"
    ),
    "evaluate": (
        "example: starsrec evaluate data/movielens-100k --protocol leave-one-out "
        "--models popularity,lambdamart --out reports/movielens"
    ),
    "index": (
        "example: starsrec index artifacts/movielens\n\n"
        "sharded, one job per shard on any machines sharing the artifact directory, then "
        "the merge:\n"
        "  starsrec index artifacts/shop --shards 8 --shard 0   # ... --shard 7\n"
        "  starsrec index artifacts/shop                        # merges, builds serving/\n"
        "the same as 4 local torchrun ranks (or torchrun -m starsrec.cli index ... on "
        "several nodes):\n"
        "  starsrec index artifacts/shop --nproc 4"
    ),
    "serve": (
        "example: starsrec serve artifacts/movielens --host 127.0.0.1 --port 8000, then open "
        "http://127.0.0.1:8000/ (the explorer page) or http://127.0.0.1:8000/docs (the API). "
        "Writes (events, products, reload) need the API key in $STARSREC_API_KEY (the page "
        "has a field for it); on a machine of your own, --insecure-open-writes opens them "
        "without one"
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The `starsrec` argument parser: data prepare, train, evaluate, index and serve."""
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
    train.add_argument("--protocol", choices=PROTOCOLS, default="leave-one-out")
    train.add_argument("--variant", default="stars", help="stars, sasrec or an ablation")
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

    evaluate = commands.add_parser(
        "evaluate",
        help="evaluate a trained artifact, or fit baselines on a prepared dataset, and "
        "report full-ranking metrics",
        epilog=EXAMPLES["evaluate"],
    )
    evaluate.add_argument(
        "data_dir", help="an artifact from `starsrec train`, or a prepared dataset directory"
    )
    evaluate.add_argument("--protocol", choices=PROTOCOLS, default="leave-one-out")
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
    evaluate.add_argument("--out", default="reports/latest", help="report directory")

    index = commands.add_parser(
        "index",
        help="offline stage: item index, user memories, event store and exported encoder "
        "inside the artifact",
        epilog=EXAMPLES["index"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    index.add_argument("artifact_dir", help="an artifact from `starsrec train`")
    index.add_argument("--data", help="the prepared dataset (default: the one it was trained on)")
    index.add_argument(
        "--shards",
        type=int,
        metavar="N",
        help="compute only the item vectors and user memories of shard --shard of N",
    )
    index.add_argument("--shard", type=int, metavar="I", help="which shard, 0 to N - 1")
    index.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="compute N shards as N local processes under torchrun, then merge",
    )

    serve = commands.add_parser(
        "serve",
        help="serve an indexed artifact over HTTP: the API, and the explorer page at /",
        description="Serve an indexed artifact over HTTP: the JSON API under /v1 and the "
        "explorer page at / (pick a shopper, add items to their session, set the date, add "
        "products and see the recommendations move).",
        epilog=EXAMPLES["serve"],
    )
    add_serve_arguments(serve)
    return parser


def run(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    """Run the parsed command and return its exit status (`argv` is re-used to re-launch under
    torchrun)."""
    if args.command == "data":
        dataset = prepare(args.source)
        out = save_prepared(dataset, args.out)
        print(format_summary(summarize(dataset)))
        print(f"\nwrote {out}/")
        return 0
    if args.command == "train":
        if args.nproc > 1 and not distributed.launched_by_torchrun():
            return distributed.relaunch(args.nproc, without_option(argv, "--nproc"))
        config = load_config(args.config, args.overrides)
        rank = distributed.init_from_environment()
        try:
            out = train_artifact(
                args.data_dir, args.out, config, args.protocol, args.variant, args.checkpoints
            )
        finally:
            distributed.shutdown()
        if rank.is_main:
            print(f"wrote {out}/")
        return 0
    if args.command == "evaluate" and is_artifact(args.data_dir):
        record = evaluate_artifact(args.data_dir)
        title = f"{record['dataset']}, {record['protocol']}, artifact {args.data_dir}"
        report = write_report([record], args.out, title)
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
        records = run_models(
            dataset, args.protocol, models, seeds=(args.seed,), exclude_seen=args.exclude_seen
        )
        title = f"{dataset.name}, {args.protocol}"
        report = write_report(records, args.out, title)
        print(f"wrote {report} and {report.parent / 'results.json'}")
        return 0
    if args.command == "index":
        return run_index(args, argv)
    if args.command == "serve":
        from starsrec.web.server import run_serve  # uvicorn and the service: only to serve

        return run_serve(args)
    raise AssertionError(f"unhandled command {args.command}")


def run_index(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """`starsrec index`: whole, one shard, sharded under torchrun, or merging shards."""
    from shutil import rmtree

    from starsrec.serving import shards as offline_shards
    from starsrec.serving.offline import build_serving

    root = args.artifact_dir
    if (args.shards is None) != (args.shard is None):
        raise ValueError("--shards N and --shard I go together")
    if args.nproc > 1 and not distributed.launched_by_torchrun():
        return distributed.relaunch(args.nproc, without_option(argv, "--nproc"))
    rank = distributed.init_from_environment()
    if rank.distributed:
        try:
            if rank.is_main:  # shards of an earlier, different split must not be merged
                rmtree(f"{root}/{offline_shards.SHARDS_DIR}", ignore_errors=True)
            distributed.barrier()
            offline_shards.compute_shard(
                root, rank.world_size, rank.rank, args.data, progress=rank.is_main
            )
            distributed.barrier()
        finally:
            distributed.shutdown()
        if not rank.is_main:
            return 0
        out = offline_shards.build_serving_from_shards(root, args.data)
    elif args.shards is not None:
        path = offline_shards.compute_shard(root, args.shards, args.shard, args.data)
        print(f"wrote {path}; once all {args.shards} shards exist: starsrec index {root}")
        return 0
    elif offline_shards.has_shards(root):
        out = offline_shards.build_serving_from_shards(root, args.data)
    else:
        out = build_serving(root, args.data)
    print(f"wrote {out}/; start the service with: starsrec serve {root}")
    return 0


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
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
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


if __name__ == "__main__":
    sys.exit(main())
