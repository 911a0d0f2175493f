# Set-up and entry points. `make demo` and `make test` each create the virtual
# environment on first use, so a fresh clone needs nothing else.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch 2.13.0 is pinned because its CPU wheel is what CPU-only machines get;
# an unpinned torch resolves to a multi-GB CUDA build.
TORCH_CPU_VERSION ?= 2.13.0
LLAMA_CPP_VERSION ?= 0.3.36
# The default native build of llama.cpp segfaulted on the first decode of
# Gemma 3 270M on our x86-64 CI machines; a portable AVX2 build does not.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
SDIST_DIR := $(VENV)/sdist
STAMP := $(VENV)/.relearn-installed
DEMO_OUT ?= runs/demo

.PHONY: all setup demo test test-fast clean-venv

all: demo

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "CUDA GPU found: installing torch with CUDA support"; \
		$(BIN)/python -m pip install --quiet torch; \
	else \
		echo "no CUDA GPU: installing the CPU build of torch $(TORCH_CPU_VERSION)"; \
		$(BIN)/python -m pip install --quiet torch==$(TORCH_CPU_VERSION); \
	fi
	@# The sdist is kept even when llama_cpp is already importable: export takes
	@# llama.cpp's GGUF converter from it, matching the installed version.
	@test -f $(SDIST_DIR)/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz || { \
		mkdir -p $(SDIST_DIR) && \
		$(BIN)/python -m pip download --quiet --no-deps --no-binary :all: \
			llama-cpp-python==$(LLAMA_CPP_VERSION) -d $(SDIST_DIR); }
	@if ! $(BIN)/python -c "import llama_cpp" >/dev/null 2>&1; then \
		echo "building llama-cpp-python $(LLAMA_CPP_VERSION) from source (about 6 minutes)"; \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install --quiet --no-cache-dir \
			$(SDIST_DIR)/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz; \
	fi
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

# A finished demo is not run again: the target points at its report instead.
demo: $(STAMP)
	@if grep -qs '"status": "complete"' $(DEMO_OUT)/state.json; then \
		echo "The demo in $(DEMO_OUT) has finished: its report is $(DEMO_OUT)/report.md"; \
		echo "To run it again, delete $(DEMO_OUT) or pass another folder: make demo DEMO_OUT=runs/demo2"; \
	else \
		$(BIN)/relearn-local run --config examples/demo.yaml --forget examples/forget.json \
			--retain examples/retain.json --out $(DEMO_OUT); \
	fi

# Runs every test, the few that load the real Gemma 3 270M included.
test: $(STAMP)
	$(BIN)/python -m pytest -q

# Skips the tests marked real_model (tiny random-weight models only).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not real_model"

clean-venv:
	rm -rf $(VENV)
