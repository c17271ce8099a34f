// gather_patches on the CPU: patchify an image or video batch and keep the patches ids (B, K) in
// one pass, straight from x's memory (any strides), into (B, K, t*p*p*C) in MAE's patch order.
//
// Floor: reads the kept patches once and writes them once: 2 * B * K * t*p*p*C elements, a
// (1 - mask_ratio) fraction of what patchify-then-gather moves. The copy is by element size, so
// any dtype (uint8 images included) takes the same path.
// Backward: the gradient rows are added back into a zero image batch, one sample per task (no
// two tasks touch one sample, so repeated ids accumulate without races).
// Limits: ids int64 (B, K) with values in [0, L), checked before any access (IndexError).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cstdint>

#include "nexus_fast/checks.h"
#include "nexus_fast/patch_geometry.h"

namespace nexus_fast {
namespace {

void check_ids(const at::Tensor& ids, const PatchGeometry& g) {
  TORCH_CHECK(ids.dim() == 2 && ids.size(0) == g.batch, "ids must be (B, K) with B = ", g.batch,
              ", got shape ", ids.sizes());
  check_indices(ids, g.num_patches(), "ids", "patches");
}

// Copies bits of one element size (uint16_t for bfloat16 and float16, uint32_t for float, ...).
// The inner loop runs along x's fastest dimension: along the width for NCHW (each patch row is
// one contiguous read), along the channels for channels-last.
template <typename bits_t>
void gather_kernel(const PatchGeometry& g, const bits_t* x, const int64_t* ids, int64_t kept,
                   bits_t* out) {
  const int64_t patch_numel = g.patch_numel();
  const bool channels_inner = g.stride_c < g.stride_w;
  at::parallel_for(0, g.batch * kept, 64, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const bits_t* patch = x + g.origin(row / kept, ids[row]);
      bits_t* dst = out + row * patch_numel;
      for (int64_t t = 0; t < g.tubelet; ++t) {
        for (int64_t p = 0; p < g.patch; ++p) {
          const bits_t* line = patch + t * g.stride_t + p * g.stride_h;
          bits_t* line_out = dst + (t * g.patch + p) * g.patch * g.channels;
          if (channels_inner) {
            for (int64_t q = 0; q < g.patch; ++q) {
              for (int64_t c = 0; c < g.channels; ++c) {
                line_out[q * g.channels + c] = line[q * g.stride_w + c * g.stride_c];
              }
            }
          } else {
            for (int64_t c = 0; c < g.channels; ++c) {
              for (int64_t q = 0; q < g.patch; ++q) {
                line_out[q * g.channels + c] = line[q * g.stride_w + c * g.stride_c];
              }
            }
          }
        }
      }
    }
  });
}

at::Tensor gather_patches_cpu(const at::Tensor& x, int64_t patch_size, int64_t tubelet,
                              const at::Tensor& ids) {
  const PatchGeometry g = patch_geometry(x, patch_size, tubelet);
  check_ids(ids, g);
  const at::Tensor ids_c = ids.contiguous();
  at::Tensor out = at::empty({g.batch, ids.size(1), g.patch_numel()}, x.options());
  const int64_t* id = ids_c.const_data_ptr<int64_t>();
  switch (x.element_size()) {
    case 1:
      gather_kernel(g, static_cast<const uint8_t*>(x.const_data_ptr()), id, ids.size(1),
                    static_cast<uint8_t*>(out.data_ptr()));
      break;
    case 2:
      gather_kernel(g, static_cast<const uint16_t*>(x.const_data_ptr()), id, ids.size(1),
                    static_cast<uint16_t*>(out.data_ptr()));
      break;
    case 4:
      gather_kernel(g, static_cast<const uint32_t*>(x.const_data_ptr()), id, ids.size(1),
                    static_cast<uint32_t*>(out.data_ptr()));
      break;
    case 8:
      gather_kernel(g, static_cast<const uint64_t*>(x.const_data_ptr()), id, ids.size(1),
                    static_cast<uint64_t*>(out.data_ptr()));
      break;
    default:
      TORCH_CHECK(false, "gather_patches: unsupported element size ", x.element_size());
  }
  return out;
}

at::Tensor gather_patches_backward_cpu(const at::Tensor& grad, const at::Tensor& ids,
                                       int64_t patch_size, int64_t tubelet,
                                       at::IntArrayRef input_size) {
  at::Tensor grad_x = at::zeros(input_size, grad.options());
  const PatchGeometry g = patch_geometry(grad_x, patch_size, tubelet);
  check_ids(ids, g);
  const int64_t kept = ids.size(1);
  TORCH_CHECK(grad.dim() == 3 && grad.size(0) == g.batch && grad.size(1) == kept &&
                  grad.size(2) == g.patch_numel(),
              "grad must be (", g.batch, ", ", kept, ", ", g.patch_numel(), "), got ",
              grad.sizes());
  const at::Tensor grad_c = grad.contiguous();
  const at::Tensor ids_c = ids.contiguous();
  const int64_t* id = ids_c.const_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, grad.scalar_type(), "gather_patches_backward", [&] {
        const scalar_t* src = grad_c.const_data_ptr<scalar_t>();
        scalar_t* dst = grad_x.data_ptr<scalar_t>();
        at::parallel_for(0, g.batch, 1, [&](int64_t begin, int64_t end) {
          for (int64_t b = begin; b < end; ++b) {
            for (int64_t k = 0; k < kept; ++k) {
              const scalar_t* row = src + (b * kept + k) * g.patch_numel();
              scalar_t* patch = dst + g.origin(b, id[b * kept + k]);
              for (int64_t t = 0; t < g.tubelet; ++t) {
                for (int64_t p = 0; p < g.patch; ++p) {
                  scalar_t* line = patch + t * g.stride_t + p * g.stride_h;
                  for (int64_t q = 0; q < g.patch; ++q) {
                    for (int64_t c = 0; c < g.channels; ++c) {
                      line[q * g.stride_w + c * g.stride_c] += *row++;
                    }
                  }
                }
              }
            }
          }
        });
      });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(nexus_fast, CPU, m) {
  m.impl("gather_patches", &gather_patches_cpu);
  m.impl("gather_patches_backward", &gather_patches_backward_cpu);
}

}  // namespace nexus_fast
