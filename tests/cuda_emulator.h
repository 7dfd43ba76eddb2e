// cuda_emulator.h - runs kvec_cuda.cu's kernels on the CPU, so that machines
// without a GPU (CI, most development machines) still test their logic.
//
// Force-included when kvec_cuda.cu and tests/test_cuda.cu are compiled as
// plain C++ (see the Makefile's test-cuda-emulated):
//
//     c++ -std=c++17 -x c++ -include tests/cuda_emulator.h kvec_cuda.cu ...
//
// A launch runs its blocks one after another; each block runs one fiber
// per thread, switched at every barrier and warp shuffle, so
// __syncthreads, __syncthreads_or and __shfl_xor_sync mean what they mean
// on the GPU. Shared memory is a static per kernel (one block runs at a
// time). A barrier that not every live thread of the block reaches, or a
// shuffle that not every live lane of the warp reaches, is reported as a
// deadlock and stops the program: the divergent-barrier bugs a GPU would
// hang on or silently mis-execute.
//
// What it cannot show: most races between threads (a fiber runs until it
// blocks; between two barriers the threads run in order, then in reverse
// order, which catches a thread that must run before or after another,
// but nothing finer), memory-model effects, speed, and anything about the
// real hardware. compute-sanitizer on a GPU does those.
// Device memory is host memory: cudaMalloc is malloc.
#ifndef KVEC_CUDA_EMULATOR_H
#define KVEC_CUDA_EMULATOR_H
#define KVEC_CUDA_EMULATE 1

#include <ucontext.h>
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define KC_DYNAMIC_SHARED(type, name) type *name = (type *)kc_emu::dynamic_shared()

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct float2 { float x, y; };
struct uint4 { unsigned x, y, z, w; };
struct __half { uint16_t bits; };
struct __nv_bfloat16 { uint16_t bits; };
inline float2 make_float2(float x, float y) { float2 v; v.x = x; v.y = y; return v; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float kc_emu_bits_to_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline float __bfloat162float(__nv_bfloat16 b) { return kc_emu_bits_to_float((uint32_t)b.bits << 16); }
inline float __half2float(__half h) {
    const uint32_t sign = (uint32_t)(h.bits & 0x8000u) << 16, exponent = (h.bits >> 10) & 31u,
                   mantissa = h.bits & 0x3ffu;
    if (exponent == 31) return kc_emu_bits_to_float(sign | 0x7f800000u | (mantissa << 13));
    if (exponent == 0) { /* zero or subnormal: mantissa * 2^-24 */
        const float v = (float)mantissa * (1.0f / 16777216.0f);
        return sign ? -v : v;
    }
    return kc_emu_bits_to_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

/* Round to nearest even, as __float2half_rn and __float2bfloat16_rn do. */
inline __half __float2half_rn(float f) {
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    const uint32_t sign = (bits >> 16) & 0x8000u;
    const int32_t exponent = (int32_t)((bits >> 23) & 0xffu) - 127 + 15;
    uint32_t mantissa = bits & 0x7fffffu;
    __half h;
    if (((bits >> 23) & 0xffu) == 0xffu) { h.bits = (uint16_t)(sign | 0x7c00u | (mantissa ? 0x200u : 0)); return h; }
    if (exponent >= 31) { h.bits = (uint16_t)(sign | 0x7c00u); return h; }
    if (exponent <= 0) { /* subnormal or zero */
        if (exponent < -10) { h.bits = (uint16_t)sign; return h; }
        mantissa |= 0x800000u;
        const int shift = 14 - exponent;
        uint32_t half_mantissa = mantissa >> shift;
        const uint32_t rest = mantissa & ((1u << shift) - 1), halfway = 1u << (shift - 1);
        if (rest > halfway || (rest == halfway && (half_mantissa & 1u))) half_mantissa++;
        h.bits = (uint16_t)(sign | half_mantissa);
        return h;
    }
    uint32_t out = sign | ((uint32_t)exponent << 10) | (mantissa >> 13);
    const uint32_t rest = mantissa & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (out & 1u))) out++; /* may carry into the exponent: correct */
    h.bits = (uint16_t)out;
    return h;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    __nv_bfloat16 b;
    if ((bits & 0x7fffffffu) > 0x7f800000u) { b.bits = (uint16_t)((bits >> 16) | 0x40u); return b; }
    bits += 0x7fffu + ((bits >> 16) & 1u);
    b.bits = (uint16_t)(bits >> 16);
    return b;
}
inline float kc_emu_to_float(__half h) { return __half2float(h); }
inline float kc_emu_to_float(__nv_bfloat16 b) { return __bfloat162float(b); }


/* >>runtime API subset */
typedef int cudaError_t;
typedef void *cudaStream_t;
enum { cudaSuccess = 0, cudaErrorMemoryAllocation = 2 };
enum cudaMemcpyKind { cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2, cudaMemcpyDeviceToDevice = 3 };
inline const char *cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "emulated error"; }
inline cudaError_t cudaGetDeviceCount(int *n) { *n = 1; return cudaSuccess; }
inline cudaError_t cudaMalloc(void **p, size_t bytes) {
    *p = std::malloc(bytes ? bytes : 1);
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
inline cudaError_t cudaFree(void *p) { std::free(p); return cudaSuccess; }
inline cudaError_t cudaMemcpy(void *d, const void *s, size_t n, cudaMemcpyKind) { std::memcpy(d, s, n); return cudaSuccess; }
inline cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, cudaMemcpyKind, cudaStream_t) {
    std::memcpy(d, s, n);
    return cudaSuccess;
}
inline cudaError_t cudaMemset(void *d, int v, size_t n) { std::memset(d, v, n); return cudaSuccess; }
inline cudaError_t cudaMemsetAsync(void *d, int v, size_t n, cudaStream_t) { std::memset(d, v, n); return cudaSuccess; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
inline cudaError_t cudaPeekAtLastError() { return cudaSuccess; }
inline cudaError_t cudaGetLastError() { return cudaSuccess; }

/* >>fibers */
/* Switching fibers. ucontext's swapcontext saves and restores the signal
   mask with a system call at every switch, which made it four fifths of the
   emulated test's time. On x86-64 (System V), outside the sanitizer builds,
   a fiber is instead a stack pointer and kc_emu_switch saves what the ABI
   says a callee must preserve (rbx, rbp, r12-r15, the SSE control word and
   the x87 control word) on the old stack and restores it from the new one.
   AddressSanitizer must see every stack switch, and knows swapcontext: the
   sanitizer builds (and other architectures) keep ucontext. */
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KC_EMU_UCONTEXT 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || !defined(__x86_64__)
#define KC_EMU_UCONTEXT 1
#endif

#ifndef KC_EMU_UCONTEXT
/* kc_emu_switch(save, next): stores the running stack's pointer in *save,
   continues on the stack pointer next. Weak: every translation unit that
   includes this header defines it, the linker keeps one. */
extern "C" void kc_emu_switch(void **save, void *next);
__asm__(".text\n"
        ".weak kc_emu_switch\n"
        ".type kc_emu_switch, @function\n"
        "kc_emu_switch:\n"
        "    pushq %rbp\n"
        "    pushq %rbx\n"
        "    pushq %r12\n"
        "    pushq %r13\n"
        "    pushq %r14\n"
        "    pushq %r15\n"
        "    subq $8, %rsp\n"
        "    stmxcsr (%rsp)\n"
        "    fnstcw 4(%rsp)\n"
        "    movq %rsp, (%rdi)\n"
        "    movq %rsi, %rsp\n"
        "    ldmxcsr (%rsp)\n"
        "    fldcw 4(%rsp)\n"
        "    addq $8, %rsp\n"
        "    popq %r15\n"
        "    popq %r14\n"
        "    popq %r13\n"
        "    popq %r12\n"
        "    popq %rbx\n"
        "    popq %rbp\n"
        "    ret\n"
        ".size kc_emu_switch, .-kc_emu_switch\n");
#endif

namespace kc_emu {

enum { RUNNING, AT_BARRIER, AT_SHUFFLE, DONE };

struct fiber {
#ifdef KC_EMU_UCONTEXT
    ucontext_t context;
#else
    void *stack_pointer;   /* where kc_emu_switch left this fiber's registers */
#endif
    int        state;
    int        predicate;  /* __syncthreads_or's argument, then its result */
    uint64_t   exchange;   /* shuffle: this lane's value, then the partner's */
    int        partner;    /* shuffle: the lane read */
};

struct runtime {
    dim3 grid, block, block_index;
    unsigned threads = 0, current = 0;
    std::vector<fiber> fibers;
    std::vector<char> stacks;
    std::vector<double> shared_memory; /* dynamic shared memory, 8-byte aligned */
#ifdef KC_EMU_UCONTEXT
    ucontext_t scheduler;
#else
    void *scheduler;       /* the launching thread's stack pointer while a fiber runs */
#endif
    const std::function<void()> *body = nullptr;
};

inline runtime &rt() { static runtime r; return r; }
inline void *dynamic_shared() { return rt().shared_memory.data(); }

inline dim3 thread_index() {
    const runtime &r = rt();
    const unsigned t = r.current;
    return dim3(t % r.block.x, t / r.block.x % r.block.y, t / (r.block.x * r.block.y));
}

#ifdef KC_EMU_UCONTEXT
inline void fiber_entry() {
    (*rt().body)();
    rt().fibers[rt().current].state = DONE; /* uc_link returns to the scheduler */
}

/* From the running fiber to the scheduler, and from the scheduler into
   fiber t. */
inline void yield() {
    runtime &r = rt();
    swapcontext(&r.fibers[r.current].context, &r.scheduler);
}
inline void resume(unsigned t) {
    runtime &r = rt();
    swapcontext(&r.scheduler, &r.fibers[t].context);
}
inline void start_fiber(unsigned t, char *stack, size_t stack_bytes) {
    runtime &r = rt();
    fiber &f = r.fibers[t];
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = stack;
    f.context.uc_stack.ss_size = stack_bytes;
    f.context.uc_link = &r.scheduler;
    makecontext(&f.context, fiber_entry, 0);
}
#else
inline void yield() {
    runtime &r = rt();
    kc_emu_switch(&r.fibers[r.current].stack_pointer, r.scheduler);
}
inline void resume(unsigned t) {
    runtime &r = rt();
    kc_emu_switch(&r.scheduler, r.fibers[t].stack_pointer);
}
/* A new fiber's first switch "returns" into fiber_entry, which never
   returns: when the body is done it marks the fiber and switches away for
   good. */
[[noreturn]] inline void fiber_entry() {
    (*rt().body)();
    rt().fibers[rt().current].state = DONE;
    void *unused;
    kc_emu_switch(&unused, rt().scheduler);
    __builtin_unreachable();
}
inline void start_fiber(unsigned t, char *stack, size_t stack_bytes) {
    /* The stack, from its top: a zero return address for fiber_entry (as if
       it had been called; the ABI wants the stack pointer 16-byte aligned
       before that call), fiber_entry's address for kc_emu_switch's ret, six
       zero registers, and the current SSE and x87 control words. */
    uintptr_t top = ((uintptr_t)(stack + stack_bytes)) & ~(uintptr_t)15;
    void **slot = (void **)top;
    *--slot = nullptr;
    void (*entry)() = fiber_entry;
    std::memcpy(--slot, &entry, sizeof entry);
    for (int i = 0; i < 6; i++) *--slot = nullptr;
    uint32_t sse_control = 0;
    uint16_t x87_control = 0;
    __asm__ volatile("stmxcsr %0\n\tfnstcw %1" : "=m"(sse_control), "=m"(x87_control));
    *--slot = nullptr;
    std::memcpy((char *)slot, &sse_control, 4);
    std::memcpy((char *)slot + 4, &x87_control, 2);
    rt().fibers[t].stack_pointer = slot;
}
#endif

inline int block_barrier(int predicate) {
    fiber &f = rt().fibers[rt().current];
    f.state = AT_BARRIER;
    f.predicate = predicate != 0;
    yield();
    return f.predicate;
}

inline uint64_t shuffle(uint64_t value, int partner_lane) {
    runtime &r = rt();
    fiber &f = r.fibers[r.current];
    f.state = AT_SHUFFLE;
    f.exchange = value;
    f.partner = (int)(r.current / 32 * 32) + partner_lane;
    yield();
    return f.exchange;
}

[[noreturn]] inline void deadlock(const char *what) {
    const runtime &r = rt();
    std::fprintf(stderr, "cuda_emulator: deadlock in block (%u,%u,%u): %s\n", r.block_index.x, r.block_index.y,
                 r.block_index.z, what);
    std::abort();
}

/* Runs every block of the grid, one at a time. */
inline void launch(dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()> &body) {
    const size_t stack_bytes = 64 * 1024;
    runtime &r = rt();
    r.grid = grid;
    r.block = block;
    r.threads = block.x * block.y * block.z;
    r.body = &body;
    r.fibers.resize(r.threads);
    if (r.stacks.size() < r.threads * stack_bytes) r.stacks.resize(r.threads * stack_bytes);
    r.shared_memory.assign(shared_bytes / sizeof(double) + 1, 0.0);
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                r.block_index = dim3(bx, by, bz);
                for (unsigned t = 0; t < r.threads; t++) {
                    r.fibers[t].state = RUNNING;
                    start_fiber(t, r.stacks.data() + t * stack_bytes, stack_bytes);
                }
                for (unsigned round = 0;; round++) {
                    /* Forward, then backward: a thread that relies on running
                       before or after another between two barriers (a race
                       on the GPU) meets both orders. */
                    for (unsigned step = 0; step < r.threads; step++) {
                        const unsigned t = round % 2 ? r.threads - 1 - step : step;
                        if (r.fibers[t].state == RUNNING) {
                            r.current = t;
                            resume(t);
                        }
                    }
                    /* Nobody runs: release a warp whose live lanes all wait at a shuffle. */
                    bool released = false, all_done = true, all_at_barrier = true, any_at_barrier = false;
                    for (unsigned w = 0; w * 32 < r.threads; w++) {
                        const unsigned lo = w * 32, hi = std::min(lo + 32, r.threads);
                        bool any = false, all = true;
                        for (unsigned t = lo; t < hi; t++) {
                            if (r.fibers[t].state == DONE) continue;
                            any = true;
                            all = all && r.fibers[t].state == AT_SHUFFLE;
                        }
                        if (!any || !all) continue;
                        std::vector<uint64_t> values(hi - lo);
                        for (unsigned t = lo; t < hi; t++) values[t - lo] = r.fibers[t].exchange;
                        for (unsigned t = lo; t < hi; t++) {
                            fiber &f = r.fibers[t];
                            if (f.state != AT_SHUFFLE) continue;
                            if (f.partner >= (int)lo && f.partner < (int)hi && r.fibers[f.partner].state != DONE)
                                f.exchange = values[f.partner - lo];
                            f.state = RUNNING;
                        }
                        released = true;
                    }
                    if (released) continue;
                    for (unsigned t = 0; t < r.threads; t++) {
                        const int s = r.fibers[t].state;
                        all_done = all_done && s == DONE;
                        all_at_barrier = all_at_barrier && (s == DONE || s == AT_BARRIER);
                        any_at_barrier = any_at_barrier || s == AT_BARRIER;
                    }
                    if (all_done) break;
                    if (!all_at_barrier) deadlock("a shuffle that not every live lane of its warp reached");
                    if (!any_at_barrier) deadlock("no runnable thread");
                    int any_true = 0;
                    for (unsigned t = 0; t < r.threads; t++)
                        if (r.fibers[t].state == AT_BARRIER) any_true |= r.fibers[t].predicate;
                    for (unsigned t = 0; t < r.threads; t++)
                        if (r.fibers[t].state == AT_BARRIER) {
                            r.fibers[t].predicate = any_true;
                            r.fibers[t].state = RUNNING;
                        }
                }
            }
    r.body = nullptr;
}

} // namespace kc_emu

#define threadIdx (kc_emu::thread_index())
#define blockIdx (kc_emu::rt().block_index)
#define blockDim (kc_emu::rt().block)
#define gridDim (kc_emu::rt().grid)

inline void __syncthreads() { kc_emu::block_barrier(0); }
inline int __syncthreads_or(int predicate) { return kc_emu::block_barrier(predicate); }

template <typename T> inline T __shfl_xor_sync(unsigned, T value, int lane_mask) {
    static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
    uint64_t bits = 0;
    std::memcpy(&bits, &value, sizeof(T));
    bits = kc_emu::shuffle(bits, (int)(threadIdx.x % 32) ^ lane_mask);
    std::memcpy(&value, &bits, sizeof(T));
    return value;
}

/* One fiber runs at a time: plain read-modify-write is atomic. */
inline int atomicAdd(int *p, int v) { const int old = *p; *p += v; return old; }
inline int atomicOr(int *p, int v) { const int old = *p; *p |= v; return old; }
inline int atomicCAS(int *p, int compare, int v) { const int old = *p; if (old == compare) *p = v; return old; }

/* kernel<<<grid, block, shared, stream>>>(args), synchronously. */
#define KC_START(kernel, grid_, block_, shared_, args) \
    kc_emu::launch(dim3(grid_), dim3(block_), (shared_), [&]() { kernel args; })

/* WMMA: a fragment holds its whole 16 x 16 matrix (the real distribution
   over the warp is unspecified, so nothing may depend on it), and lane 0
   of the warp does the whole warp's operation; the other lanes' fragments
   are never looked at, since a fragment is only seen through
   store_matrix_sync, which lane 0 does for the warp. */
namespace nvcuda {
namespace wmma {
inline bool kc_emu_lane0() { return kc_emu::rt().current % 32 == 0; }
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
template <typename Use, int M, int N, int K, typename T, typename Layout = void> struct fragment {
    float x[16][16]; /* [row][col] of the logical matrix (A: M x K, B: K x N, C: M x N) */
};
template <typename T>
inline void load_matrix_sync(fragment<matrix_a, 16, 16, 16, T, row_major> &f, const T *p, unsigned ldm) {
    if (!kc_emu_lane0()) return;
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++) f.x[r][c] = kc_emu_to_float(p[r * ldm + c]);
}
template <typename T>
inline void load_matrix_sync(fragment<matrix_b, 16, 16, 16, T, col_major> &f, const T *p, unsigned ldm) {
    if (!kc_emu_lane0()) return;
    for (int k = 0; k < 16; k++)
        for (int n = 0; n < 16; n++) f.x[k][n] = kc_emu_to_float(p[n * ldm + k]);
}
inline void fill_fragment(fragment<accumulator, 16, 16, 16, float> &f, float v) {
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++) f.x[r][c] = v;
}
template <typename A, typename B>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float> &d, const A &a, const B &b,
                     const fragment<accumulator, 16, 16, 16, float> &c) {
    if (!kc_emu_lane0()) return;
    fragment<accumulator, 16, 16, 16, float> out;
    for (int m = 0; m < 16; m++)
        for (int n = 0; n < 16; n++) {
            float acc = c.x[m][n];
            for (int k = 0; k < 16; k++) acc = std::fma(a.x[m][k], b.x[k][n], acc);
            out.x[m][n] = acc;
        }
    d = out;
}
inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 16, float> &f, unsigned ldm, layout_t) {
    if (!kc_emu_lane0()) return;
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++) p[r * ldm + c] = f.x[r][c];
}
} // namespace wmma
} // namespace nvcuda

/* >>CUB subset */
namespace cub {

template <typename T, int BLOCK_THREADS> struct BlockScan {
    struct TempStorage { T values[BLOCK_THREADS]; };
    TempStorage &storage;
    explicit BlockScan(TempStorage &s) : storage(s) {}
    void ExclusiveSum(T input, T &output, T &aggregate) {
        const unsigned t = kc_emu::rt().current, n = kc_emu::rt().threads;
        storage.values[t] = input;
        __syncthreads();
        T before = T(), total = T();
        for (unsigned i = 0; i < n; i++) {
            if (i < t) before += storage.values[i];
            total += storage.values[i];
        }
        output = before;
        aggregate = total;
        __syncthreads();
    }
};

struct DeviceRadixSort {
    /* Ascending by the key's bits [begin_bit, end_bit), stable. */
    template <typename K, typename V>
    static cudaError_t SortPairs(void *temp, size_t &temp_bytes, const K *keys_in, K *keys_out, const V *values_in,
                                 V *values_out, int n, int begin_bit = 0, int end_bit = (int)(sizeof(K) * 8),
                                 cudaStream_t = 0) {
        if (!temp) { temp_bytes = 16; return cudaSuccess; }
        const K mask = (end_bit - begin_bit >= (int)(sizeof(K) * 8) ? ~K(0) : ((K(1) << (end_bit - begin_bit)) - 1))
                       << begin_bit;
        std::vector<int> order((size_t)n);
        for (int i = 0; i < n; i++) order[i] = i;
        std::stable_sort(order.begin(), order.end(),
                         [&](int a, int b) { return (keys_in[a] & mask) < (keys_in[b] & mask); });
        for (int i = 0; i < n; i++) {
            keys_out[i] = keys_in[order[i]];
            values_out[i] = values_in[order[i]];
        }
        return cudaSuccess;
    }
};

} // namespace cub

#endif
