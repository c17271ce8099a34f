// MAE's masked patch loss on the CPU, with the target patchified inside the kernel.
//
// Forward: for every patch (b, l) whose mask weight w is not 0, gather the patch of `images` in
// (t, p, q, C) order, standardise it when norm_pix ((x - mean) / sqrt(unbiased var + eps), two
// passes), and average (pred - target)^2 over its P = t*p*p*C elements; the loss is
// sum(w * e) / sum(w) (0 when no weight is set). Backward: d loss / d pred =
// 2 * grad * w * (pred - target) / (P * sum(w)), the target recomputed the same way.
// Floor: per masked patch, P image elements and P pred elements are read once (unmasked patches
// are not read at all); the forward writes one number per patch, the backward the (B, L, P)
// gradient. ViT-B/16 at B=256 with 75% masking, fp32 images and bf16 pred: 173 MB read.
// About 8 FLOPs per element: memory-bound.
// Limits: pred and images float32, float64, bfloat16 or float16 (any strides); mask bool or
// floating; statistics in float32 (float64 when pred is float64, which also makes the loss
// float64). Patches are spread over threads with at::parallel_for; the per-patch results are
// summed in a fixed order, so the loss does not depend on the thread count.
#include "nexus_fast/masked_patch_loss.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "nexus_fast/cpu_clones.h"

namespace nexus_fast {
namespace {

// Elements of work per parallel_for grain: enough to amortise a task, few enough to balance.
constexpr int64_t kGrainElements = 1 << 15;

// The patch arguments the kernels share, resolved once per call.
struct PatchArgs {
  PatchGeometry g;
  bool norm_pix;
  double eps;
};

// Copies n values from `source` (stride apart) to `out`, contiguously, in the accumulation type.
template <typename image_t, typename acc_t>
NEXUS_FAST_CPU_CLONES void copy_span(const image_t* __restrict__ source, int64_t stride, int64_t n,
                                     acc_t* __restrict__ out) {
  if (stride == 1) {  // a row of an NCHW image: a loop the compiler vectorises
    for (int64_t j = 0; j < n; ++j) {
      out[j] = static_cast<acc_t>(source[j]);
    }
  } else {
    for (int64_t j = 0; j < n; ++j) {
      out[j] = static_cast<acc_t>(source[j * stride]);
    }
  }
}

// How a gathered patch is laid out in the scratch buffer. Interleaved is pred's (t, p, q, C)
// order; planar is (C, t, p, q), which copies whole image rows when channels are planes (NCHW):
// half the time of interleaving them on the way in. Statistics do not depend on the order, and
// the error loops read pred channel by channel to match.
enum class Layout { kInterleaved, kPlanar };

Layout gather_layout(const PatchGeometry& g) {
  const bool channels_last = g.stride_c == 1 && g.stride_w == g.channels;
  return channels_last ? Layout::kInterleaved : Layout::kPlanar;
}

// Copies patch `index` (= b * L + l) of the images into `out` in the given layout.
template <typename image_t, typename acc_t>
void gather_target(const image_t* images, const PatchGeometry& g, Layout layout, int64_t index,
                   acc_t* out) {
  const int64_t b = index / g.patches;
  const int64_t l = index % g.patches;
  const int64_t cells = g.grid_h * g.grid_w;
  const int64_t frame = l / cells;
  const int64_t row = (l % cells) / g.grid_w;
  const int64_t column = l % g.grid_w;
  const int64_t p = g.patch_size;
  const image_t* origin = images + b * g.stride_b + frame * g.tubelet * g.stride_t +
                          row * p * g.stride_h + column * p * g.stride_w;
  for (int64_t dt = 0; dt < g.tubelet; ++dt) {
    for (int64_t dy = 0; dy < p; ++dy) {
      const image_t* line = origin + dt * g.stride_t + dy * g.stride_h;
      if (layout == Layout::kInterleaved) {  // (dx, c) is one contiguous run of p * C values
        copy_span(line, 1, p * g.channels, out + (dt * p + dy) * p * g.channels);
        continue;
      }
      for (int64_t c = 0; c < g.channels; ++c) {
        copy_span(line + c * g.stride_c, g.stride_w, p, out + ((c * g.tubelet + dt) * p + dy) * p);
      }
    }
  }
}

// pred[b, l, :] of patch `index` (= b * L + l).
template <typename pred_t>
const pred_t* pred_row(const pred_t* pred, const PatchGeometry& g, int64_t index) {
  return pred + (index / g.patches) * g.pred_stride_b + (index % g.patches) * g.pred_stride_l;
}

// Independent partial sums: one running sum is a chain of dependent adds (4 cycles each) that
// the compiler may not reorder without -ffast-math; 16 chains vectorise and pipeline. The order of
// the additions is fixed, so results do not depend on the machine's vector width.
constexpr int64_t kLanes = 16;

// sum over j in [0, n) of term(j), in kLanes interleaved partial sums.
template <typename acc_t, typename Term>
__attribute__((always_inline)) inline acc_t lane_sum(int64_t n, Term&& term) {
  acc_t lanes[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int64_t k = 0; k < kLanes; ++k) {
      lanes[k] += term(j + k);
    }
  }
  acc_t total = 0;
  for (; j < n; ++j) {
    total += term(j);
  }
  for (int64_t k = 0; k < kLanes; ++k) {
    total += lanes[k];
  }
  return total;
}

// The target of a patch is (x - mean) * inv_std; (0, 1) without norm_pix.
template <typename acc_t>
struct Standardization {
  acc_t mean;
  acc_t inv_std;
};

// Mean and 1 / sqrt(unbiased var + eps) of a patch, in two passes (mean, then squared
// deviations), which keeps the variance accurate when the mean is large against the spread.
template <typename acc_t>
NEXUS_FAST_CPU_CLONES Standardization<acc_t> standardization(const acc_t* __restrict__ target,
                                                             int64_t n, const PatchArgs& args) {
  if (!args.norm_pix) {
    return {acc_t(0), acc_t(1)};
  }
  const acc_t mean = lane_sum<acc_t>(n, [&](int64_t j) { return target[j]; }) / acc_t(n);
  const acc_t squares = lane_sum<acc_t>(n, [&](int64_t j) {
    const acc_t deviation = target[j] - mean;
    return deviation * deviation;
  });
  // Unbiased, as torch.var and the official code (the wrapper rejects one-value patches).
  const acc_t var = squares / acc_t(n - 1);
  return {mean, acc_t(1) / std::sqrt(var + static_cast<acc_t>(args.eps))};
}

// sum_j (pred_j - target_j)^2 with pred read in place (pred_stride apart).
template <typename pred_t, typename acc_t>
NEXUS_FAST_CPU_CLONES acc_t squared_error(const acc_t* __restrict__ target,
                                          const pred_t* __restrict__ pred, int64_t pred_stride,
                                          int64_t n, Standardization<acc_t> norm) {
  const auto term = [&](acc_t prediction, acc_t value) {
    const acc_t error = prediction - (value - norm.mean) * norm.inv_std;
    return error * error;
  };
  if (pred_stride == 1) {  // the usual case: a loop the compiler vectorises
    return lane_sum<acc_t>(n, [&](int64_t j) { return term(acc_t(pred[j]), target[j]); });
  }
  return lane_sum<acc_t>(n,
                         [&](int64_t j) { return term(acc_t(pred[j * pred_stride]), target[j]); });
}

// out_j = scale * (pred_j - target_j) in pred's dtype, out_stride apart.
template <typename pred_t, typename acc_t>
NEXUS_FAST_CPU_CLONES void write_gradient(const acc_t* __restrict__ target,
                                          const pred_t* __restrict__ pred, int64_t pred_stride,
                                          int64_t n, Standardization<acc_t> norm, acc_t scale,
                                          pred_t* __restrict__ out, int64_t out_stride) {
  for (int64_t j = 0; j < n; ++j) {
    const acc_t prediction = static_cast<acc_t>(pred[j * pred_stride]);
    out[j * out_stride] =
        static_cast<pred_t>(scale * (prediction - (target[j] - norm.mean) * norm.inv_std));
  }
}

// The squared error of one gathered patch against pred[b, l, :].
template <typename pred_t, typename acc_t>
acc_t patch_squared_error(const acc_t* target, const pred_t* pred, const PatchGeometry& g,
                          Layout layout, Standardization<acc_t> norm) {
  if (layout == Layout::kInterleaved) {
    return squared_error(target, pred, g.pred_stride_p, g.volume, norm);
  }
  // Planar: channel c of pred is every C-th value from offset c.
  const int64_t span = g.volume / g.channels;
  acc_t total = 0;
  for (int64_t c = 0; c < g.channels; ++c) {
    total += squared_error(target + c * span, pred + c * g.pred_stride_p,
                           g.channels * g.pred_stride_p, span, norm);
  }
  return total;
}

// Writes the gradient of one patch to out[0, P) in pred's (t, p, q, C) order.
template <typename pred_t, typename acc_t>
void patch_gradient(const acc_t* target, const pred_t* pred, const PatchGeometry& g, Layout layout,
                    Standardization<acc_t> norm, acc_t scale, pred_t* out) {
  if (layout == Layout::kInterleaved) {
    write_gradient(target, pred, g.pred_stride_p, g.volume, norm, scale, out, 1);
    return;
  }
  const int64_t span = g.volume / g.channels;
  for (int64_t c = 0; c < g.channels; ++c) {
    write_gradient(target + c * span, pred + c * g.pred_stride_p, g.channels * g.pred_stride_p,
                   span, norm, scale, out + c, g.channels);
  }
}

// Mask weights in the accumulation type, contiguous (B * L,).
template <typename acc_t>
at::Tensor mask_weights(const at::Tensor& mask) {
  return mask.to(std::is_same_v<acc_t, double> ? at::kDouble : at::kFloat).contiguous();
}

// The denominator sum(w), summed in double and clamped as the reference clamps it: an all-zero
// mask divides 0 by the smallest normal number, giving a loss of 0.
template <typename acc_t>
double weight_total(const acc_t* w, int64_t count) {
  double total = 0;
  for (int64_t i = 0; i < count; ++i) {
    total += w[i];
  }
  return std::max(total, static_cast<double>(std::numeric_limits<acc_t>::min()));
}

int64_t patches_per_grain(const PatchGeometry& g) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, g.volume));
}

template <typename pred_t, typename image_t, typename acc_t>
at::Tensor forward_typed(const at::Tensor& pred, const at::Tensor& images, const at::Tensor& mask,
                         const PatchArgs& args) {
  const PatchGeometry& g = args.g;
  const at::Tensor weights = mask_weights<acc_t>(mask);
  const acc_t* w = weights.const_data_ptr<acc_t>();
  const double total = weight_total(w, weights.numel());
  const pred_t* pred_data = pred.const_data_ptr<pred_t>();
  const image_t* image_data = images.const_data_ptr<image_t>();
  const int64_t count = g.batch * g.patches;
  const Layout layout = gather_layout(g);
  std::vector<acc_t> per_patch(count, acc_t(0));
  at::parallel_for(0, count, patches_per_grain(g), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> target(g.volume);
    for (int64_t index = begin; index < end; ++index) {
      if (w[index] == acc_t(0)) {
        continue;  // contributes nothing: its image and pred are never read
      }
      gather_target(image_data, g, layout, index, target.data());
      const Standardization<acc_t> norm = standardization(target.data(), g.volume, args);
      const acc_t squares =
          patch_squared_error(target.data(), pred_row(pred_data, g, index), g, layout, norm);
      per_patch[index] = squares / static_cast<acc_t>(g.volume);
    }
  });
  double weighted = 0;
  for (int64_t index = 0; index < count; ++index) {
    if (w[index] != acc_t(0)) {
      weighted += static_cast<double>(per_patch[index]) * static_cast<double>(w[index]);
    }
  }
  constexpr auto acc_dtype = std::is_same_v<acc_t, double> ? at::kDouble : at::kFloat;
  at::Tensor loss = at::empty({}, pred.options().dtype(acc_dtype));
  *loss.mutable_data_ptr<acc_t>() = static_cast<acc_t>(weighted / total);
  return loss;
}

template <typename pred_t, typename image_t, typename acc_t>
at::Tensor backward_typed(double upstream, const at::Tensor& pred, const at::Tensor& images,
                          const at::Tensor& mask, const PatchArgs& args) {
  const PatchGeometry& g = args.g;
  const at::Tensor weights = mask_weights<acc_t>(mask);
  const acc_t* w = weights.const_data_ptr<acc_t>();
  const double total = weight_total(w, weights.numel());
  const pred_t* pred_data = pred.const_data_ptr<pred_t>();
  const image_t* image_data = images.const_data_ptr<image_t>();
  at::Tensor grad_pred = at::empty({g.batch, g.patches, g.volume}, pred.options());
  pred_t* out = grad_pred.mutable_data_ptr<pred_t>();
  const Layout layout = gather_layout(g);
  // d/d pred of w * mean_j (pred_j - target_j)^2 / total.
  const double base = 2.0 * upstream / (static_cast<double>(g.volume) * total);
  at::parallel_for(0, g.batch * g.patches, patches_per_grain(g), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> target(g.volume);
    for (int64_t index = begin; index < end; ++index) {
      pred_t* row = out + index * g.volume;
      if (w[index] == acc_t(0)) {
        std::fill(row, row + g.volume, static_cast<pred_t>(0));
        continue;
      }
      gather_target(image_data, g, layout, index, target.data());
      const Standardization<acc_t> norm = standardization(target.data(), g.volume, args);
      const acc_t scale = static_cast<acc_t>(base * static_cast<double>(w[index]));
      patch_gradient(target.data(), pred_row(pred_data, g, index), g, layout, norm, scale, row);
    }
  });
  return grad_pred;
}

// Calls body(pred_t{}, image_t{}, acc_t{}) for the dtypes of pred and images.
template <typename Body>
at::Tensor dispatch(const at::Tensor& pred, const at::Tensor& images, Body&& body) {
  at::Tensor result;
  dispatch_float_dtype(pred.scalar_type(), "pred", [&](auto pred_tag) {
    using pred_t = decltype(pred_tag);
    using acc_t = std::conditional_t<std::is_same_v<pred_t, double>, double, float>;
    dispatch_float_dtype(images.scalar_type(), "images", [&](auto image_tag) {
      result = body(pred_t{}, decltype(image_tag){}, acc_t{});
    });
  });
  return result;
}

at::Tensor masked_patch_loss_cpu(const at::Tensor& pred, const at::Tensor& images,
                                 const at::Tensor& mask, int64_t patch_size, int64_t tubelet,
                                 bool norm_pix, double eps) {
  const PatchArgs args{check_masked_patch_loss_args(pred, images, mask, patch_size, tubelet, eps),
                       norm_pix, eps};
  TORCH_CHECK(pred.device().is_cpu(), "masked_patch_loss (CPU kernel) got ", pred.device());
  return dispatch(pred, images, [&](auto pred_tag, auto image_tag, auto acc_tag) {
    return forward_typed<decltype(pred_tag), decltype(image_tag), decltype(acc_tag)>(pred, images,
                                                                                     mask, args);
  });
}

at::Tensor masked_patch_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& pred,
                                          const at::Tensor& images, const at::Tensor& mask,
                                          int64_t patch_size, int64_t tubelet, bool norm_pix,
                                          double eps) {
  const PatchArgs args{check_masked_patch_loss_args(pred, images, mask, patch_size, tubelet, eps),
                       norm_pix, eps};
  TORCH_CHECK(pred.device().is_cpu(), "masked_patch_loss_backward (CPU kernel) got ",
              pred.device());
  TORCH_CHECK(grad.numel() == 1, "grad must hold one value (the loss is 0-dim), got shape ",
              grad.sizes());
  const double upstream = grad.item<double>();
  return dispatch(pred, images, [&](auto pred_tag, auto image_tag, auto acc_tag) {
    return backward_typed<decltype(pred_tag), decltype(image_tag), decltype(acc_tag)>(
        upstream, pred, images, mask, args);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(nexus_fast, CPU, m) {
  m.impl("masked_patch_loss", &masked_patch_loss_cpu);
  m.impl("masked_patch_loss_backward", &masked_patch_loss_backward_cpu);
}

}  // namespace nexus_fast
