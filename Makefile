# kvec: make test | make test-asan | make demo | make quality | make bench | make cuda | make clean
CC      ?= cc
CXX     ?= c++
WARN     = -Wall -Wextra -Werror -pedantic
CFLAGS_C = -std=c99 $(WARN) -O2 -g
OPENMP   = -fopenmp
BUILD    = build
SAN      = -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer

.PHONY: all test test-asan demo quality bench clean readme-check nvcc-check quality-smoke cuda test-cuda

all: $(BUILD)/test_kvec $(BUILD)/hello $(BUILD)/quality $(BUILD)/generate

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
# build then runs the same checks on smaller shapes.
test-cuda: $(BUILD)/test_cuda_emulated $(BUILD)/cuda_quickstart_emulated
	@if command -v $(NVCC) > /dev/null; then $(MAKE) --no-print-directory cuda && $(BUILD)/test_cuda && $(BUILD)/cuda_quickstart; \
	else echo "kvec_cuda.cu: skipped the nvcc build (nvcc not found)"; fi
	$(BUILD)/test_cuda_emulated --quick
	$(BUILD)/cuda_quickstart_emulated

$(BUILD)/test_kvec_asan: tests/test_kvec.c kvec.h | $(BUILD)
	$(CC) $(CFLAGS_C) -O1 $(OPENMP) $(SAN) -o $@ tests/test_kvec.c -lm

$(BUILD)/hello: examples/hello.c kvec.h | $(BUILD)
	$(CC) $(CFLAGS_C) $(OPENMP) -o $@ examples/hello.c -lm

$(BUILD)/quickstart: examples/quickstart.c kvec.h | $(BUILD)
	$(CC) $(CFLAGS_C) $(OPENMP) -o $@ examples/quickstart.c -lm

# The example engine (examples/engine) and what runs on it. Optimised for
# this machine: the quality benchmark runs thousands of prefills.
ENGINE     = examples/engine/model.c examples/engine/tasks.c examples/engine/json.c
ENGINE_DEP = $(ENGINE) examples/engine/model.h examples/engine/tasks.h examples/engine/json.h kvec.h
ENGINE_CC  = $(CC) -std=c99 $(WARN) -O3 -march=native -g $(OPENMP)

$(BUILD)/test_engine: tests/test_engine.c $(ENGINE_DEP) | $(BUILD)
	$(ENGINE_CC) -o $@ tests/test_engine.c $(ENGINE) -lm

$(BUILD)/test_engine_asan: tests/test_engine.c $(ENGINE_DEP) | $(BUILD)
	$(CC) $(CFLAGS_C) -O1 $(OPENMP) $(SAN) -o $@ tests/test_engine.c $(ENGINE) -lm

$(BUILD)/quality: bench/quality.c $(ENGINE_DEP) | $(BUILD)
	$(ENGINE_CC) -o $@ bench/quality.c $(ENGINE) -lm

$(BUILD)/generate: examples/engine/generate.c $(ENGINE_DEP) | $(BUILD)
	$(ENGINE_CC) -o $@ examples/engine/generate.c $(ENGINE) -lm

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

test: $(BUILD)/test_kvec $(BUILD)/test_kvec_noomp $(BUILD)/test_cpp $(BUILD)/test_static $(BUILD)/hello $(BUILD)/quickstart readme-check nvcc-check test-cuda $(BUILD)/test_engine quality-smoke
	$(BUILD)/quickstart
	$(BUILD)/hello > /dev/null
	$(BUILD)/test_cpp
	$(BUILD)/test_static
	$(BUILD)/test_kvec_noomp --quiet
	$(BUILD)/test_engine
	$(BUILD)/test_kvec

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

# The project's main job on its bundled model: how much each policy keeps of
# what the model needs, 4 samples per task and length (a few minutes).
demo: $(BUILD)/quality
	$(BUILD)/quality --quick --out $(BUILD)/quality-quick.json

# The full quality benchmark on both bundled models (64 samples per task and
# length), then the plot (needs python3 with matplotlib).
quality: $(BUILD)/quality
	$(BUILD)/quality --model bench/models/ref-4l --out bench/results/quality.json | tee bench/results/quality.txt
	$(BUILD)/quality --model bench/models/dev-6l --out bench/results/quality-dev-6l.json | tee bench/results/quality-dev-6l.txt
	python3 bench/plot_quality.py bench/results/quality.json bench/results/quality-dev-6l.json -o bench/results/quality.png

# The speed benchmark needs OpenBLAS for its matrix-product reference
# (Debian: apt-get install libopenblas-dev).
$(BUILD)/speed: bench/speed.c kvec.h | $(BUILD)
	$(CC) -std=c99 -O3 -march=native $(OPENMP) -o $@ bench/speed.c -lopenblas -lm

bench: $(BUILD)/speed
	$(BUILD)/speed

clean:
	rm -rf $(BUILD)
