// fuzz_cuda_host.h - force-included after tests/cuda_emulator.h when
// tests/fuzz_kvec.c links kvec_cuda.cu: the host side of every kvec_cuda_*
// call runs (descriptor checks, sizes, the scratch carve, the overlap rule),
// and the kernels are compiled but not run. The fuzzer looks for what the
// host validation lets through; tests/test_cuda.cu runs the kernels.
#ifndef KVEC_FUZZ_CUDA_HOST_H
#define KVEC_FUZZ_CUDA_HOST_H
#undef KC_START
#define KC_START(kernel, grid_, block_, shared_, args)          \
    do {                                                        \
        auto kc_not_run_ = [&]() { kernel args; };              \
        (void)kc_not_run_;                                      \
        (void)dim3(grid_); (void)dim3(block_); (void)(shared_); \
    } while (0)
#endif
