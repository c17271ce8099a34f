// What the masked patch loss kernels share: the patch geometry of an image or clip, derived from
// the arguments after checking them, and the dtype dispatch of pred and images.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace nexus_fast {

// Where patch l of sample b lies in `images`, and how its elements are ordered in pred.
// Images are (B, C, H, W): one frame, tubelet 1, stride_t 0. Clips are (B, C, T, H, W).
struct PatchGeometry {
  int64_t batch;
  int64_t channels;
  int64_t tubelet;     // frames per patch (t)
  int64_t patch_size;  // p
  int64_t grid_h;      // H / p
  int64_t grid_w;      // W / p
  int64_t patches;     // L = (T / t) * grid_h * grid_w
  int64_t volume;      // P = t * p * p * C, the last dimension of pred
  // Element strides of images along (B, C, T, H, W); stride_t is 0 for images.
  int64_t stride_b, stride_c, stride_t, stride_h, stride_w;
  // Element strides of pred along (B, L, P).
  int64_t pred_stride_b, pred_stride_l, pred_stride_p;
};

inline bool is_supported_float(at::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 ||
         dtype == at::kHalf;
}

// Checks the arguments of masked_patch_loss(_backward) and returns the geometry they describe.
inline PatchGeometry check_masked_patch_loss_args(const at::Tensor& pred, const at::Tensor& images,
                                                  const at::Tensor& mask, int64_t patch_size,
                                                  int64_t tubelet, double eps) {
  TORCH_CHECK(pred.dim() == 3, "pred must be (B, L, P), got shape ", pred.sizes());
  TORCH_CHECK(images.dim() == 4 || images.dim() == 5,
              "images must be (B, C, H, W) or (B, C, T, H, W), got shape ", images.sizes());
  TORCH_CHECK(mask.dim() == 2, "mask must be (B, L), got shape ", mask.sizes());
  TORCH_CHECK(patch_size > 0, "patch_size must be positive, got ", patch_size);
  TORCH_CHECK(tubelet > 0, "tubelet must be positive, got ", tubelet);
  TORCH_CHECK(images.dim() == 5 || tubelet == 1, "tubelet ", tubelet,
              " needs video (B, C, T, H, W); images (B, C, H, W) take tubelet 1");
  TORCH_CHECK(eps > 0, "eps must be positive, got ", eps);
  TORCH_CHECK(is_supported_float(pred.scalar_type()), "pred dtype ", pred.scalar_type(),
              " is not supported; allowed: float32, float64, bfloat16, float16");
  TORCH_CHECK(is_supported_float(images.scalar_type()), "images dtype ", images.scalar_type(),
              " is not supported; allowed: float32, float64, bfloat16, float16");
  TORCH_CHECK(mask.scalar_type() == at::kBool || at::isFloatingType(mask.scalar_type()),
              "mask dtype ", mask.scalar_type(), " is not supported; allowed: bool or floating");
  TORCH_CHECK(pred.device() == images.device() && pred.device() == mask.device(),
              "pred, images and mask must be on one device, got ", pred.device(), ", ",
              images.device(), " and ", mask.device());

  const bool video = images.dim() == 5;
  const int64_t height = images.size(-2);
  const int64_t width = images.size(-1);
  const int64_t frames = video ? images.size(2) : 1;
  TORCH_CHECK(height % patch_size == 0 && width % patch_size == 0, "image size ", height, "x",
              width, " is not divisible by patch_size ", patch_size);
  TORCH_CHECK(frames % tubelet == 0, frames, " frames are not divisible by tubelet ", tubelet);

  PatchGeometry g{};
  g.batch = images.size(0);
  g.channels = images.size(1);
  g.tubelet = tubelet;
  g.patch_size = patch_size;
  g.grid_h = height / patch_size;
  g.grid_w = width / patch_size;
  g.patches = (frames / tubelet) * g.grid_h * g.grid_w;
  g.volume = tubelet * patch_size * patch_size * g.channels;
  g.stride_b = images.stride(0);
  g.stride_c = images.stride(1);
  g.stride_t = video ? images.stride(2) : 0;
  g.stride_h = images.stride(-2);
  g.stride_w = images.stride(-1);
  TORCH_CHECK(pred.size(0) == g.batch && pred.size(1) == g.patches && pred.size(2) == g.volume,
              "pred has shape ", pred.sizes(), " but images ", images.sizes(), " with patch_size ",
              patch_size, " and tubelet ", tubelet, " give (", g.batch, ", ", g.patches, ", ",
              g.volume, ")");
  TORCH_CHECK(mask.size(0) == g.batch && mask.size(1) == g.patches, "mask has shape ", mask.sizes(),
              " but pred has (B, L) = (", g.batch, ", ", g.patches, ")");
  g.pred_stride_b = pred.stride(0);
  g.pred_stride_l = pred.stride(1);
  g.pred_stride_p = pred.stride(2);
  return g;
}

// Calls body(value_t{}) with value_t the C++ type of a float32/float64/bfloat16/float16 dtype.
template <typename Body>
void dispatch_float_dtype(at::ScalarType dtype, const char* name, Body&& body) {
  switch (dtype) {
    case at::kFloat:
      body(float{});
      break;
    case at::kDouble:
      body(double{});
      break;
    case at::kBFloat16:
      body(c10::BFloat16{});
      break;
    case at::kHalf:
      body(c10::Half{});
      break;
    default:
      TORCH_CHECK(false, name, " dtype ", dtype,
                  " is not supported; allowed: float32, float64, bfloat16, float16");
  }
}

}  // namespace nexus_fast
