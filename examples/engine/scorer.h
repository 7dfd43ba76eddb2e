/* scorer.h - learned scorers (kvec_learned_scores) in files: one per model,
   trained by build/train_scorer, read by the engine's tools.

   The file (little-endian; every size below is exact, so a truncated or
   padded file is refused):

     "KVECSCR1"                      8 bytes, the magic and version
     kind, output                    u32 each: kvec_scorer_kind, kvec_scorer_output
     n_layers, n_embd, n_kv_heads,   u32 each
     n_hidden                        u32, 0 for a linear scorer
     fingerprint                     u64, llm_model_fingerprint of the model it was trained on
     model_name                      64 bytes, NUL-padded: the model file it was trained on
     target                          64 bytes, NUL-padded: what it predicts, in words
     per layer, in order:            fp32 arrays as kvec_scorer lays them out:
       weight [rows][n_embd], bias [rows]      rows = n_kv_heads (linear) or n_hidden (MLP)
       weight2 [n_kv_heads][n_hidden], bias2 [n_kv_heads]   (MLP only)
     checksum                        u64, FNV-1a over every byte before it

   Floats are read as they lie: a little-endian host. A scorer is refused for a model whose shape (layers, hidden size, KV
   heads) or fingerprint differs from the one it was trained on, with a
   message that names both. */
#ifndef KVEC_EXAMPLE_SCORER_H
#define KVEC_EXAMPLE_SCORER_H

#include "model.h"

#include <stdint.h>

#define LLM_SCORER_NAME_BYTES 64

typedef struct llm_scorer {
    kvec_scorer *layers;     /* [n_layers], pointing into weights */
    float       *weights;    /* every layer's arrays, in file order */
    int64_t      n_layers;
    uint64_t     fingerprint;
    char         model_name[LLM_SCORER_NAME_BYTES], target[LLM_SCORER_NAME_BYTES];
} llm_scorer;

/* FNV-1a over the model's shape, its file's weight type and every layer's
   attention-norm weights: cheap, and different for another model, or for
   the same model in another weight type (two quantisations with one type
   name, and the same norms, are not told apart). */
uint64_t llm_model_fingerprint(const llm_model *model);
/* The same in steps, for a program that reads the model another way: start
   with the shape and the weight type (the ggml type name, upper case, of
   the type holding most elements of the 2-D blk.* tensors: "Q4_1", "F16"),
   then add each layer's attention-norm weights ([n_embd] fp32) in order. */
uint64_t llm_fingerprint_start(int64_t n_layers, int64_t n_embd, int64_t n_kv_heads, const char *weight_dtype);
uint64_t llm_fingerprint_layer(uint64_t fingerprint, const float *attn_norm, int64_t n_embd);

/* What a scorer file must have been trained for. */
typedef struct llm_scorer_target {
    int64_t  n_layers, n_embd, n_kv_heads;
    uint64_t fingerprint;
} llm_scorer_target;

/* Reads path and checks it against model. Returns 0, or -1 with a message
   (missing or corrupt file, another model). */
int  llm_scorer_load(llm_scorer *scorer, const char *path, const llm_model *model, char *error, size_t error_size);
/* The same against a shape and fingerprint (llm_fingerprint_start). */
int  llm_scorer_load_for(llm_scorer *scorer, const char *path, const llm_scorer_target *want, char *error,
                         size_t error_size);
/* Writes layers ([n_layers], one shape) for model. Returns 0, or -1 with a message. */
int  llm_scorer_save(const char *path, const kvec_scorer *layers, const llm_model *model, const char *model_name,
                     const char *target, char *error, size_t error_size);
void llm_scorer_free(llm_scorer *scorer);

/* scorers/NAME.kvs, NAME the model file's name without its folder and
   ".gguf": where `make scorer` writes a model's scorer, and the file the
   tools read when none is named. */
void llm_scorer_default_path(const char *model_file, char *path, size_t path_size);
/* The same in another folder: FOLDER/NAME.kvs. 0, or -1 when it does not
   fit in path_size. */
int  llm_scorer_path_in(const char *folder, const char *model_file, char *path, size_t path_size);

#endif
