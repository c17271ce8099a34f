// Where patch l of sample b starts in an image (B, C, H, W) or video (B, C, T, H, W) of any
// strides, in MAE's patch order: patch l is cell (l / (gh gw), (l / gw) % gh, l % gw) of the
// (T / tubelet, H / p, W / p) grid, and its elements run (t, p, q, C), channels last.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace nexus_fast {

struct PatchGeometry {
  int64_t batch, channels, patch, tubelet;
  int64_t grid_t, grid_h, grid_w;                            // grid_t = 1 for images
  int64_t stride_b, stride_c, stride_t, stride_h, stride_w;  // elements; stride_t = 0 for images

  int64_t num_patches() const {
    return grid_t * grid_h * grid_w;
  }
  int64_t patch_numel() const {
    return tubelet * patch * patch * channels;
  }

  // Offset of the first element (t = p = q = c = 0) of patch `cell` of sample b.
  int64_t origin(int64_t b, int64_t cell) const {
    const int64_t gw = cell % grid_w;
    const int64_t gh = (cell / grid_w) % grid_h;
    const int64_t gt = cell / (grid_w * grid_h);
    return b * stride_b + gt * tubelet * stride_t + gh * patch * stride_h + gw * patch * stride_w;
  }
};

inline PatchGeometry patch_geometry(const at::Tensor& x, int64_t patch_size, int64_t tubelet) {
  TORCH_CHECK(x.dim() == 4 || x.dim() == 5,
              "expected images (B, C, H, W) or video (B, C, T, H, W), got shape ", x.sizes());
  TORCH_CHECK(patch_size > 0 && tubelet > 0, "patch_size and tubelet must be positive, got ",
              patch_size, " and ", tubelet);
  const bool video = x.dim() == 5;
  const int64_t frames = video ? x.size(2) : 1;
  const int64_t height = x.size(-2), width = x.size(-1);
  TORCH_CHECK(height % patch_size == 0 && width % patch_size == 0, "image size ", height, "x",
              width, " is not divisible by patch_size ", patch_size);
  TORCH_CHECK(!video || frames % tubelet == 0, frames, " frames are not divisible by tubelet ",
              tubelet);
  TORCH_CHECK(video || tubelet == 1, "tubelet ", tubelet, " needs video (B, C, T, H, W)");
  return PatchGeometry{
      x.size(0),           x.size(1),          patch_size,  tubelet,     frames / tubelet,
      height / patch_size, width / patch_size, x.stride(0), x.stride(1), video ? x.stride(2) : 0,
      x.stride(-2),        x.stride(-1),
  };
}

}  // namespace nexus_fast
