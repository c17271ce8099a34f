// Token gathers on the CPU: gather_tokens (the encoder-side gather, e.g. of position embeddings
// at the kept patches), scatter_tokens (the MAE decoder's unshuffle that fills removed positions
// with the mask token) and scatter_add_tokens (the backward of both).
//
// Floor: one read and one write of every output row (B * M * D elements); the official unshuffle
// (repeat mask tokens, cat, gather) writes the sequence twice and allocates both.
// Backward: tasks own disjoint column ranges of D, so repeated ids accumulate without races, in
// a fixed order (deterministic); rows with ids >= num_rows are summed into the fill gradient.
// Limits: ids int64 (B, M), checked before any access (IndexError); the feature dimension of
// tokens must be contiguous (other strides are free).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

#include "nexus_fast/checks.h"

namespace nexus_fast {
namespace {

// out[b, m] = source row ids[b, m] when it is < rows, else the fill row (ids < rows + fills).
at::Tensor gather_rows(const at::Tensor& source, const at::Tensor& ids, const at::Tensor* fill,
                       int64_t limit, const char* what) {
  TORCH_CHECK(source.dim() == 3, "tokens must be (B, N, D), got shape ", source.sizes());
  TORCH_CHECK(ids.dim() == 2, "ids must be (B, M), got shape ", ids.sizes());
  const int64_t batch = ids.size(0), length = ids.size(1), dim = source.size(2);
  TORCH_CHECK(source.size(0) == batch || source.size(0) == 1, "tokens batch ", source.size(0),
              " must be 1 or match the ids batch ", batch);
  check_indices(ids, limit, "ids", what);
  const at::Tensor src = source.stride(2) == 1 ? source : source.contiguous();
  const at::Tensor ids_c = ids.contiguous();
  at::Tensor out = at::empty({batch, length, dim}, source.options());
  const int64_t rows = src.size(1);
  const int64_t stride_b = src.size(0) == 1 ? 0 : src.stride(0), stride_n = src.stride(1);
  const size_t row_bytes = dim * src.element_size();
  const char* base = static_cast<const char*>(src.const_data_ptr());
  const char* fill_row =
      fill != nullptr ? static_cast<const char*>(fill->const_data_ptr()) : nullptr;
  const int64_t* id = ids_c.const_data_ptr<int64_t>();
  char* dst = static_cast<char*>(out.data_ptr());
  const int64_t element = src.element_size();
  at::parallel_for(0, batch * length, 256, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t index = id[row];
      const char* from =
          index < rows ? base + ((row / length) * stride_b + index * stride_n) * element : fill_row;
      std::memcpy(dst + row * row_bytes, from, row_bytes);
    }
  });
  return out;
}

at::Tensor gather_tokens_cpu(const at::Tensor& tokens, const at::Tensor& ids) {
  TORCH_CHECK(tokens.dim() == 3, "tokens must be (B, N, D), got shape ", tokens.sizes());
  return gather_rows(tokens, ids, nullptr, tokens.size(1), "tokens");
}

at::Tensor scatter_tokens_cpu(const at::Tensor& tokens, const at::Tensor& ids_restore,
                              const at::Tensor& mask_token) {
  TORCH_CHECK(tokens.dim() == 3 && ids_restore.dim() == 2 && tokens.size(0) == ids_restore.size(0),
              "tokens (B, K, D) and ids_restore (B, L) must share B, got ", tokens.sizes(), " and ",
              ids_restore.sizes());
  TORCH_CHECK(tokens.size(1) <= ids_restore.size(1), "more kept tokens (", tokens.size(1),
              ") than positions (", ids_restore.size(1), ")");
  TORCH_CHECK(mask_token.numel() == tokens.size(2), "mask_token must have ", tokens.size(2),
              " elements, got shape ", mask_token.sizes());
  const at::Tensor fill = mask_token.to(tokens.scalar_type()).contiguous();
  return gather_rows(tokens, ids_restore, &fill, ids_restore.size(1), "positions");
}

std::tuple<at::Tensor, at::Tensor> scatter_add_tokens_cpu(const at::Tensor& grad,
                                                          const at::Tensor& ids, int64_t num_rows,
                                                          bool sum_batch) {
  TORCH_CHECK(grad.dim() == 3 && ids.dim() == 2 && grad.size(0) == ids.size(0) &&
                  grad.size(1) == ids.size(1),
              "grad (B, M, D) and ids (B, M) must agree, got ", grad.sizes(), " and ", ids.sizes());
  const int64_t batch = grad.size(0), length = grad.size(1), dim = grad.size(2);
  check_indices(ids, ids.size(1) > num_rows ? ids.size(1) : num_rows, "ids", "rows");
  const at::Tensor grad_c = grad.contiguous();
  const at::Tensor ids_c = ids.contiguous();
  at::Tensor grad_rows = at::zeros({sum_batch ? 1 : batch, num_rows, dim}, grad.options());
  at::Tensor grad_fill = at::empty({dim}, grad.options());
  const int64_t* id = ids_c.const_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, grad.scalar_type(), "scatter_add_tokens", [&] {
        const scalar_t* src = grad_c.const_data_ptr<scalar_t>();
        scalar_t* rows = grad_rows.data_ptr<scalar_t>();
        scalar_t* fill = grad_fill.data_ptr<scalar_t>();
        using acc_t = at::opmath_type<scalar_t>;
        // Each task owns columns [d0, d1) and walks the rows in order: no races, fixed order.
        at::parallel_for(0, dim, 64, [&](int64_t d0, int64_t d1) {
          std::vector<acc_t> fill_sum(d1 - d0, acc_t(0));
          for (int64_t row = 0; row < batch * length; ++row) {
            const scalar_t* values = src + row * dim;
            const int64_t index = id[row];
            if (index < num_rows) {
              scalar_t* target = rows + ((sum_batch ? 0 : row / length) * num_rows + index) * dim;
              for (int64_t d = d0; d < d1; ++d) {
                target[d] = static_cast<scalar_t>(static_cast<acc_t>(target[d]) + values[d]);
              }
            } else {
              for (int64_t d = d0; d < d1; ++d) {
                fill_sum[d - d0] += values[d];
              }
            }
          }
          for (int64_t d = d0; d < d1; ++d) {
            fill[d] = static_cast<scalar_t>(fill_sum[d - d0]);
          }
        });
      });
  return {grad_rows, grad_fill};
}

}  // namespace

TORCH_LIBRARY_IMPL(nexus_fast, CPU, m) {
  m.impl("gather_tokens", &gather_tokens_cpu);
  m.impl("scatter_tokens", &scatter_tokens_cpu);
  m.impl("scatter_add_tokens", &scatter_add_tokens_cpu);
}

}  // namespace nexus_fast
