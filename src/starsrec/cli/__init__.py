"""The `starsrec` command line: the only place that prints.

starsrec data prepare movielens-100k --out data/movielens-100k
starsrec evaluate data/movielens-100k --protocol leave-one-out --out reports/ml

`commands` holds the parser and `main`; each other module one group of commands.
"""

from starsrec.cli.commands import build_parser, main, run, without_option

__all__ = ["build_parser", "main", "run", "without_option"]
