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

// Copies patch `index` (= b * L + l) of the images into `out` in (t, p, q, C) order.
template <typename image_t, typename acc_t>
void gather_target(const image_t* images, const PatchGeometry& g, int64_t index, acc_t* out) {
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
      acc_t* target = out + (dt * p + dy) * p * g.channels;
      // Channel-outer: along a row of an NCHW image the reads are contiguous.
      for (int64_t c = 0; c < g.channels; ++c) {
        for (int64_t dx = 0; dx < p; ++dx) {
          target[dx * g.channels + c] = static_cast<acc_t>(line[c * g.stride_c + dx * g.stride_w]);
        }
      }
    }
  }
}

// Copies pred[b, l, :] into `out` (P values in the accumulation type).
template <typename pred_t, typename acc_t>
void load_pred(const pred_t* pred, const PatchGeometry& g, int64_t index, acc_t* out) {
  const pred_t* row =
      pred + (index / g.patches) * g.pred_stride_b + (index % g.patches) * g.pred_stride_l;
  if (g.pred_stride_p == 1) {
    for (int64_t j = 0; j < g.volume; ++j) {
      out[j] = static_cast<acc_t>(row[j]);
    }
  } else {
    for (int64_t j = 0; j < g.volume; ++j) {
      out[j] = static_cast<acc_t>(row[j * g.pred_stride_p]);
    }
  }
}

// Standardises `target` in place when norm_pix: two passes (mean, then the squared deviations),
// which keeps the variance accurate for patches whose mean is large against their spread.
template <typename acc_t>
void normalize_target(acc_t* target, const PatchArgs& args) {
  if (!args.norm_pix) {
    return;
  }
  const int64_t n = args.g.volume;
  acc_t sum = 0;
  for (int64_t j = 0; j < n; ++j) {
    sum += target[j];
  }
  const acc_t mean = sum / static_cast<acc_t>(n);
  acc_t squares = 0;
  for (int64_t j = 0; j < n; ++j) {
    const acc_t deviation = target[j] - mean;
    squares += deviation * deviation;
  }
  // Unbiased, as torch.var and the official code: a one-element patch gives NaN there too.
  const acc_t var = squares / static_cast<acc_t>(n - 1);
  const acc_t inv_std = acc_t(1) / std::sqrt(var + static_cast<acc_t>(args.eps));
  for (int64_t j = 0; j < n; ++j) {
    target[j] = (target[j] - mean) * inv_std;
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
  std::vector<acc_t> per_patch(count, acc_t(0));
  at::parallel_for(0, count, patches_per_grain(g), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> target(g.volume);
    std::vector<acc_t> prediction(g.volume);
    for (int64_t index = begin; index < end; ++index) {
      if (w[index] == acc_t(0)) {
        continue;  // contributes nothing: its image and pred are never read
      }
      gather_target(image_data, g, index, target.data());
      normalize_target(target.data(), args);
      load_pred(pred_data, g, index, prediction.data());
      acc_t squares = 0;
      for (int64_t j = 0; j < g.volume; ++j) {
        const acc_t error = prediction[j] - target[j];
        squares += error * error;
      }
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
  // d/d pred of w * mean_j (pred_j - target_j)^2 / total.
  const double base = 2.0 * upstream / (static_cast<double>(g.volume) * total);
  at::parallel_for(0, g.batch * g.patches, patches_per_grain(g), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> target(g.volume);
    std::vector<acc_t> prediction(g.volume);
    for (int64_t index = begin; index < end; ++index) {
      pred_t* row = out + index * g.volume;
      if (w[index] == acc_t(0)) {
        std::fill(row, row + g.volume, static_cast<pred_t>(0));
        continue;
      }
      gather_target(image_data, g, index, target.data());
      normalize_target(target.data(), args);
      load_pred(pred_data, g, index, prediction.data());
      const acc_t scale = static_cast<acc_t>(base * static_cast<double>(w[index]));
      for (int64_t j = 0; j < g.volume; ++j) {
        row[j] = static_cast<pred_t>(scale * (prediction[j] - target[j]));
      }
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
