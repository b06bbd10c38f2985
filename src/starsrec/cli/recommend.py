"""`starsrec recommend`: batch recommendations into Parquet (`starsrec.serving.batch`)."""

from __future__ import annotations

import argparse

EXAMPLE = (
    "example: starsrec recommend artifacts/or --users all --k 20 --out recs.parquet\n"
    "  starsrec recommend artifacts/or --users campaign.csv --timestamp 2024-12-18 \\\n"
    '    --filters \'{"exclude_purchased": true, "classes": ["Bags"]}\' --out recs.parquet\n\n'
    "columns: user_id, rank (1 = best), item_id, score, and the explanation fields of\n"
    "POST /v1/recommend: text, tags, shared_tags, memory. An indexed artifact answers\n"
    "through the service's index and scoring (the rows equal the HTTP API's answers);\n"
    "users in --users FILE with no history are skipped and counted (--unknown-users fail\n"
    "refuses the run instead)."
)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the `recommend` command to the `starsrec` parser's `commands`."""
    recommend = commands.add_parser(
        "recommend",
        help="batch recommendations for many users into a Parquet file",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    recommend.add_argument(
        "artifact_dir", help="an artifact (indexed by `starsrec index`: the served path)"
    )
    recommend.add_argument(
        "--users",
        required=True,
        metavar="all|FILE",
        help="all (every user the artifact knows) or a file of user ids: one per line, or "
        "the user_id column of a .csv or .parquet file",
    )
    recommend.add_argument("--k", type=int, default=10, help="recommendations per user (1 to 1000)")
    recommend.add_argument(
        "--timestamp",
        help="the request time for every user: unix seconds or ISO 8601 (default: now)",
    )
    recommend.add_argument(
        "--filters",
        metavar="JSON",
        help="the filters of POST /v1/recommend as one JSON object: in_stock_only, classes, "
        "subclasses, exclude, exclude_purchased",
    )
    recommend.add_argument("--out", required=True, help="the Parquet file to write")
    recommend.add_argument(
        "--chunk-size",
        type=int,
        default=1000,
        metavar="N",
        help="users answered and written per step: bounds the memory (default 1000)",
    )
    recommend.add_argument(
        "--unknown-users",
        choices=("skip", "fail"),
        default="skip",
        help="users of --users FILE the artifact does not know: skip them (counted and "
        "logged; default) or fail",
    )
    recommend.add_argument(
        "--data",
        metavar="DATA_DIR",
        help="an artifact that is not indexed answers from this prepared dataset's histories "
        "(default: the one it was trained on)",
    )


def run(args: argparse.Namespace) -> int:
    """`starsrec recommend`: load, choose the users, write the file, print a summary."""
    from starsrec.serving.api import load
    from starsrec.serving.batch import BatchConfig, select_users, write_recommendations
    from starsrec.serving.request import check_k, parse_filters, parse_timestamp

    # Bad input is refused before the artifact is loaded (which can take a while).
    config = BatchConfig(chunk_size=args.chunk_size, unknown=args.unknown_users)
    k, filters = check_k(args.k), parse_filters(args.filters)
    at = parse_timestamp(args.timestamp)
    with load(args.artifact_dir, args.data) as model:
        users, skipped = select_users(model, args.users, config.unknown)
        summary = write_recommendations(model, users, args.out, k, filters, at, config, skipped)
    unknown = f" ({summary.skipped} unknown skipped)" if summary.skipped else ""
    print(
        f"wrote {args.out}: {summary.users} users{unknown}, {summary.rows} rows, "
        f"{summary.seconds:.1f} s ({summary.users_per_s:.0f} users/s) with {model.name}"
    )
    return 0
