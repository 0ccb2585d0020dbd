#include "model/head_attention.h"

#include <ATen/Parallel.h>
#include <dnnl.h>

#include <cstring>

#include "c10/util/Exception.h"
#include "common/blas_info.h"
#include "common/vector_clones.h"
#include "common/vector_math.h"

namespace anoclip::model {
namespace {

// One row: its largest value, then e^(x - largest) summed in sixteen partial sums (the same sums
// on every instruction set), then each divided by the sum.
ANOCLIP_VECTOR_CLONES void SoftmaxRow(float* row, int64_t columns) {
  float largest = row[0];
#pragma omp simd reduction(max : largest)
  for (int64_t j = 1; j < columns; ++j) largest = row[j] > largest ? row[j] : largest;
  constexpr int kLanes = 16;
  float lanes[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= columns; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const float e = ExpOfNonPositive(row[j + l] - largest);
      row[j + l] = e;
      lanes[l] += e;
    }
  }
  float sum = 0;
  for (; j < columns; ++j) {
    const float e = ExpOfNonPositive(row[j] - largest);
    row[j] = e;
    sum += e;
  }
  for (int l = 0; l < kLanes; ++l) sum += lanes[l];
  const float inverse = 1.0f / sum;
  for (j = 0; j < columns; ++j) row[j] *= inverse;
}

void CheckDnnl(dnnl_status_t status) {
  TORCH_CHECK(status == dnnl_success, "dnnl_sgemm failed with status ", static_cast<int>(status));
}

}  // namespace

bool HeadProducts::Available(GemmLibrary library) {
  return library == GemmLibrary::kOneDnn || BlasSgemm() != nullptr;
}

void HeadProducts::Multiply(bool transpose_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                            int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) const {
  if (library_ == GemmLibrary::kOneDnn) {
    CheckDnnl(dnnl_sgemm('N', transpose_b ? 'T' : 'N', m, n, k, alpha, a, lda, b, ldb, beta, c, ldc));
    return;
  }
  // The BLAS is column-major, where a row-major matrix is its transpose: cᵀ = op(b)ᵀ·aᵀ.
  const int rows = static_cast<int>(n), columns = static_cast<int>(m), depth = static_cast<int>(k),
            ld_b = static_cast<int>(ldb), ld_a = static_cast<int>(lda), ld_c = static_cast<int>(ldc);
  BlasSgemm()(transpose_b ? "T" : "N", "N", &rows, &columns, &depth, &alpha, b, &ld_b, a, &ld_a, &beta, c, &ld_c);
}

void AttendHead(const HeadProducts& products, HeadRows q, HeadRows k, HeadRows v, int64_t queries, int64_t keys,
                int64_t depth, float scale, const float* mask, float* scores, float* out, int64_t out_stride) {
  float beta = 0.0f;  // 0: the products ignore the scratch's old values
  if (mask != nullptr) {
    std::memcpy(scores, mask, sizeof(float) * queries * keys);
    beta = 1.0f;
  }
  products.Multiply(/*transpose_b=*/true, queries, keys, depth, scale, q.data, q.row_stride, k.data, k.row_stride,
                    beta, scores, keys);
  SoftmaxRows(scores, queries, keys, keys);
  products.Multiply(/*transpose_b=*/false, queries, depth, keys, 1.0f, scores, keys, v.data, v.row_stride, 0.0f, out,
                    out_stride);
}

void SoftmaxRows(float* values, int64_t rows, int64_t columns, int64_t stride) {
  if (columns <= 0) return;
  for (int64_t i = 0; i < rows; ++i) SoftmaxRow(values + i * stride, columns);
}

}  // namespace anoclip::model
