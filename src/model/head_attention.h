// Attention one head at a time, each head on one thread: its scores q·kᵀ, their softmax and the
// weighted values, one after another while the head's [Lq×Lk] scores stay in the core's cache.
// oneDNN's batched matmuls over all heads (onednn::AttendInto) write every head's scores to memory
// before the softmax reads them back: in a ViT-B-16-plus-240's batch-8 forward, AnoCLIP's two
// attentions of a block took 15.7 ms that way and 12.4 ms one head at a time (docs/performance.md).
#pragma once

#include <cstdint>

#include "model/linear.h"

namespace anoclip::model {

// Row-major float32 products on the calling thread through `library`: oneDNN's sgemm, or the
// BLAS's sgemm_ that libtorch calls. Called inside a parallel loop, both run on one core.
class HeadProducts {
 public:
  // Whether `library` can run them in this process (the BLAS needs its Fortran sgemm_).
  static bool Available(GemmLibrary library);
  explicit HeadProducts(GemmLibrary library) : library_(library) {}

  // c [m,n] = alpha · a [m,k] · op(b) + beta · c, with op(b) = bᵀ (b [n,k]) where `transpose_b`,
  // else b [k,n]; leading dimensions as given.
  void Multiply(bool transpose_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                const float* b, int64_t ldb, float beta, float* c, int64_t ldc) const;

 private:
  GemmLibrary library_;
};

// One head's rows: the first element and the distance between rows (elements within a row are
// contiguous).
struct HeadRows {
  const float* data;
  int64_t row_stride;
};

// softmax(scale · q·kᵀ + mask)·v for one head: q [queries,d], k and v [keys,d], written to `out`
// (rows `out_stride` apart). `mask` is [queries,keys] contiguous, added before the softmax, or
// null; `scores` is scratch for queries·keys floats.
void AttendHead(const HeadProducts& products, HeadRows q, HeadRows k, HeadRows v, int64_t queries, int64_t keys,
                int64_t depth, float scale, const float* mask, float* scores, float* out, int64_t out_stride);

// Each of `rows` rows of `columns` values (rows `stride` apart) replaced by its softmax. A row
// holding a NaN, or +inf, or only -inf, becomes NaN, as libtorch's softmax does; -inf elsewhere
// gives 0.
void SoftmaxRows(float* values, int64_t rows, int64_t columns, int64_t stride);

}  // namespace anoclip::model
