/* kvec_impl.c - kvec.h's implementation, compiled once: for builds (such as
   llama-server with kvec-server.patch) whose other files include kvec.h
   plainly. */
#define KVEC_IMPLEMENTATION
#include "../../kvec.h"
