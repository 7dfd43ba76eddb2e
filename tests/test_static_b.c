/* The second translation unit of the KVEC_STATIC test (see test_static_a.c):
   its own private copy of kvec, used for a check that needs no cache. */
#define KVEC_STATIC
#define KVEC_IMPLEMENTATION
#include "../kvec.h"

int check_in_b(void);

int check_in_b(void) {
    float data[4 * 2 * 8];
    kvec_tensor keys = kvec_tensor_contiguous(data, KVEC_DTYPE_F32, 4, 2, 8);
    int64_t budget = 0;
    keys.stride_head = 0; /* both heads on the same memory */
    return kvec_validate_tensor(&keys) == KVEC_ERROR_BAD_STRIDE &&
           kvec_layer_budget(NULL, 64, 0, 1, 100, &budget) == KVEC_OK && budget == 64;
}
