# krllm — the two commands of the README:
#   make demo   set up (first time) and run the main job on the built-in Korean data
#   make test   set up (first time) and run the whole test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build of PyTorch; on a CUDA box install your CUDA torch first, then `make setup TORCH_SPEC=torch`.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test test-fast browser-deps ko-help clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/krllm pipeline run configs/pipelines/demo_ko.yaml

# builtin:ko-help / builtin:ko-en-help ahead of time (otherwise fetched on first use): Debian's
# LibreOffice help packages via `apt-get download` (no root), parsed once into ~/.cache/krllm.
ko-help: setup
	$(BIN)/krllm data fetch ko-help

# Browser tests need Debian's chromium + chromium-driver; installed here when we are root with apt,
# otherwise those tests skip with a reason.
browser-deps:
	@if ! command -v chromium >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver fonts-nanum >/dev/null; \
	fi

test: setup browser-deps
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

test-fast: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "not slow and not browser"

clean:
	rm -rf $(VENV) runs .pytest_cache
