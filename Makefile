# The two commands a newcomer runs: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Two stamps: the package (all `make demo` needs) and, on top, what the test suite needs.
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.test-installed
# One thread per process on this 2-core machine: oversubscribed BLAS/torch threads run slower.
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export HF_HUB_OFFLINE := 1

.PHONY: setup test-setup demo demo-next-basket test check lint format bench bench-serving bench-hostile clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e .
	# MovieLens-100K ships inside the recbole wheel; only its data files are used, never its code.
	$(BIN)/pip install --quiet --no-deps recbole==1.2.1
	touch $(STAMP)

# The test and lint tools (pytest, ruff, mypy, playwright...) and the two servers some tests
# drive; the demo needs none of them.
test-setup: $(TEST_STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev]'
	# redis-server for the Redis event store tests (skipped without it); installs only if missing.
	./scripts/redis-server.sh
	# chromium for the explorer's browser test (skipped without it); installs only if missing.
	./scripts/chromium.sh
	touch $(TEST_STAMP)

demo: setup
	$(BIN)/starsrec data prepare movielens-100k --out data/movielens-100k
	$(BIN)/starsrec evaluate data/movielens-100k --protocol leave-one-out --out reports/demo-baselines
	$(BIN)/starsrec train data/movielens-100k --protocol leave-one-out --out artifacts/demo-stars
	$(BIN)/starsrec evaluate artifacts/demo-stars --compare-with reports/demo-baselines --out reports/demo-stars
	$(BIN)/starsrec index artifacts/demo-stars
	@$(MAKE) --no-print-directory demo-next-basket
	@echo
	@cat reports/demo-baselines/report.md
	@echo
	@cat reports/demo-stars/report.md
	@echo
	@if [ -e reports/demo-next-basket/report.md ]; then cat reports/demo-next-basket/report.md; echo; fi
	@echo "Serve it:      $(BIN)/starsrec serve artifacts/demo-stars --port 8000 --insecure-open-writes"
	@echo "Then ask it:   curl -s -X POST localhost:8000/v1/recommend -H 'content-type: application/json' \\"
	@echo "                 -d '{\"user_id\": \"1\", \"k\": 5}'"
	@echo "Explorer page: http://127.0.0.1:8000/"
	@echo "API docs:      http://127.0.0.1:8000/docs"

test: test-setup lint
	$(BIN)/pytest -q

check: test

lint: test-setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

format: test-setup
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench: setup
	$(BIN)/python benchmarks/quality.py

# The serving benchmark needs a trained, indexed artifact (`make demo` makes one) and wrk.
# The shop-log protocol on Online Retail with the quick baselines, where the shared data
# directory holds it (it is not embedded like MovieLens: ../shared/datasets/README.md).
OR_FILE = online_retail/online_retail_2010_2011_raw.parquet
demo-next-basket: setup
	@if $(BIN)/python -c "from starsrec.data.loaders import shared_file as f; f('$(OR_FILE)')" \
	    2>/dev/null; then \
	  $(BIN)/starsrec data prepare online-retail --out data/online-retail && \
	  $(BIN)/starsrec evaluate data/online-retail --protocol next-basket \
	    --models popularity,repeat-history,top-frequency,cooccurrence-knn \
	    --out reports/demo-next-basket; \
	else echo "Online Retail not found (../shared/datasets): next-basket report skipped"; fi

bench-serving: setup
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python benchmarks/serving.py --artifact artifacts/demo-stars

# Hostile clients against a real server, on a toy artifact it trains itself (about 3 minutes).
bench-hostile: setup
	$(BIN)/python benchmarks/hostile.py

clean:
	rm -rf $(VENV) data reports artifacts .cache .pytest_cache .ruff_cache .mypy_cache
