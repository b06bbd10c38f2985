#!/bin/bash
# The one-commit quality run split over two cores (benchmarks/quality.py, `--resume`): run
# stream a and stream b at once, each in its own process, from a clean checkout of one
# commit (a pinned worktree, so the commit cannot move under a run that takes days):
#
#   git worktree add --detach ../run COMMIT && cd ../run
#   nohup benchmarks/quality_streams.sh a > a.log 2>&1 &
#   nohup benchmarks/quality_streams.sh b > b.log 2>&1 &
#   (when both end) nohup benchmarks/quality_streams.sh ablations a > c.log 2>&1 &, and b
#
# Stream a: every baseline but SASRec, then STARS one seed per call, cell by cell; then
# SASRec on two cells. Stream b: SASRec (tuned on seed 0, then seeds 1-2) on three cells,
# then on Online Retail basket-completion one seed per call (each seed tuned on its own
# validation: the five fits of one call take longer than a session, which stops whatever
# runs). Then `ablations` (one stream per core: `ablations a`, `ablations b`): every STARS
# ablation, seed 0, on three cells. Stopped and started again, each goes on where it
# stopped (a model missing a seed runs all its seeds; ablations are saved one by one).
# OUT: where results go (default this checkout's benchmarks/results/quality.json): point it
# at another checkout's to keep them when the worktree goes. PYTHON: the interpreter.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src" OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-benchmarks/results/quality.json}
DOCS=$(mktemp --suffix=.md)  # each call rebuilds the table: into a copy, never the docs
cp docs/benchmarks.md "$DOCS"
quality() { "$PYTHON" benchmarks/quality.py --resume --out "$OUT" --docs "$DOCS" --threads 1 "$@"; }
ABLATIONS=stars-no-delta,stars-no-tags,stars-no-text,stars-no-dual-memory,stars-no-calendar
ABLATIONS+=,stars-no-subclass-negatives,stars-no-repeat,stars-next-basket-loss
ABLATIONS+=,stars-no-new-item-bias,stars-no-own-item-calibration,stars-no-new-item-calibration
ABLATIONS+=,stars-no-live,stars-no-cooccurrence
BASELINES=popularity,recent-popularity,repeat-history,top-frequency,tifu-knn,cooccurrence-knn
case "${1:-}" in
a)
  for cell in movielens-100k/leave-one-out movielens-100k/leave-one-out-unmasked \
    online-retail/next-basket instacart/last-basket online-retail/basket-completion \
    instacart/in-session; do
    quality --cells "$cell" --models "$BASELINES"
    for seed in 0 1 2; do quality --cells "$cell" --models lambdamart --seeds "$seed"; done
    for seed in 0 1 2; do quality --cells "$cell" --models stars --seeds "$seed"; done
  done
  for cell in instacart/in-session movielens-100k/leave-one-out-unmasked; do
    quality --cells "$cell" --models sasrec --seeds 0,1,2
  done
  ;;
b)
  for cell in online-retail/next-basket instacart/last-basket movielens-100k/leave-one-out; do
    quality --cells "$cell" --models sasrec --seeds 0,1,2
  done
  for seed in 0 1 2; do
    quality --cells online-retail/basket-completion --models sasrec --seeds "$seed"
  done
  ;;
ablations)
  case "${2:-}" in
  a) cells="online-retail/next-basket movielens-100k/leave-one-out" ;;
  b) cells="instacart/last-basket" ;;
  *) echo "usage: $0 ablations a|b" >&2 && exit 2 ;;
  esac
  for cell in $cells; do quality --cells "$cell" --models "$ABLATIONS" --seeds 0; done
  ;;
*)
  echo "usage: $0 a|b|ablations a|b (see the comment at the top)" >&2
  exit 2
  ;;
esac
rm -f "$DOCS"
echo "stream $* done $(date)"
