# kvec: make test | make test-asan | make demo | make bench | make clean
CC      ?= cc
CXX     ?= c++
WARN     = -Wall -Wextra -Werror -pedantic
CFLAGS_C = -std=c99 $(WARN) -O2 -g
OPENMP   = -fopenmp
BUILD    = build
SAN      = -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer

.PHONY: all test test-asan demo bench clean readme-check nvcc-check

all: $(BUILD)/test_kvec $(BUILD)/hello

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

$(BUILD)/test_kvec_asan: tests/test_kvec.c kvec.h | $(BUILD)
	$(CC) $(CFLAGS_C) -O1 $(OPENMP) $(SAN) -o $@ tests/test_kvec.c -lm

$(BUILD)/hello: examples/hello.c kvec.h | $(BUILD)
	$(CC) $(CFLAGS_C) $(OPENMP) -o $@ examples/hello.c -lm

$(BUILD)/quickstart: examples/quickstart.c kvec.h | $(BUILD)
	$(CC) $(CFLAGS_C) $(OPENMP) -o $@ examples/quickstart.c -lm

# The README's quick start must be the code that `make test` compiles.
readme-check: | $(BUILD)
	@awk '/^```c$$/{f=1;next} /^```$$/{if(f)exit} f' README.md > $(BUILD)/readme_quickstart.c
	@sed '/^int main(void)/,$$d' examples/quickstart.c > $(BUILD)/quickstart_head.c
	@diff -B $(BUILD)/readme_quickstart.c $(BUILD)/quickstart_head.c > /dev/null || \
	  { echo "README.md quick start differs from examples/quickstart.c"; exit 1; }
	@echo "README quick start: same as examples/quickstart.c"

test: $(BUILD)/test_kvec $(BUILD)/test_kvec_noomp $(BUILD)/test_cpp $(BUILD)/test_static $(BUILD)/hello $(BUILD)/quickstart readme-check nvcc-check
	$(BUILD)/quickstart
	$(BUILD)/hello > /dev/null
	$(BUILD)/test_cpp
	$(BUILD)/test_static
	$(BUILD)/test_kvec_noomp --quiet
	$(BUILD)/test_kvec

# OpenMP's runtime keeps its thread pool alive at exit, which LeakSanitizer
# reports as leaks that are not kvec's; leak checking is off for this build.
test-asan: $(BUILD)/test_kvec_asan
	ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1 $(BUILD)/test_kvec_asan

demo: $(BUILD)/hello
	$(BUILD)/hello

# The speed benchmark needs OpenBLAS for its matrix-product reference
# (Debian: apt-get install libopenblas-dev).
$(BUILD)/speed: bench/speed.c kvec.h | $(BUILD)
	$(CC) -std=c99 -O3 -march=native $(OPENMP) -o $@ bench/speed.c -lopenblas -lm

bench: $(BUILD)/speed
	$(BUILD)/speed

clean:
	rm -rf $(BUILD)
