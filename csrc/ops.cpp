// Every schema of the compiled operators, in one place. Kernels register per device in
// csrc/cpu/*.cpp and csrc/cuda/*.cu with TORCH_LIBRARY_IMPL; fake (meta) kernels and autograd
// formulas are registered from Python (nexus_fast/ops/*.py). Ops whose GPU kernel is written in
// Triton are defined in Python with torch.library.custom_op instead, so that they exist (and
// pass opcheck and torch.compile) without this extension and without a GPU.
#include <torch/library.h>

TORCH_LIBRARY(nexus_fast, m) {
  // teacher[i] = momentum * teacher[i] + (1 - momentum) * student[i], in place, for one group of
  // tensors sharing (device, teacher dtype, student dtype). momentum: 0-dim tensor.
  m.def("ema_update_(Tensor(a!)[] teacher, Tensor[] student, Tensor momentum) -> ()");

  // Patchify x (B, C, H, W) or (B, C, T, H, W) and keep the patches ids (B, K) in one pass:
  // (B, K, tubelet * p * p * C), each patch in MAE's (t, p, q, C) order.
  m.def("gather_patches(Tensor x, int patch_size, int tubelet, Tensor ids) -> Tensor");
  // Gradient of gather_patches w.r.t. x (contiguous, shape input_size); repeated ids accumulate.
  m.def(
      "gather_patches_backward(Tensor grad, Tensor ids, int patch_size, int tubelet, "
      "SymInt[] input_size) -> Tensor");
  // tokens (B or 1, N, D), ids (B, M) in [0, N) -> tokens[b, ids[b, m]] (B, M, D).
  m.def("gather_tokens(Tensor tokens, Tensor ids) -> Tensor");
  // MAE's unshuffle: tokens (B, K, D), ids_restore (B, L) -> (B, L, D) where ids < K take
  // tokens[b, ids] and ids in [K, L) take mask_token (D).
  m.def("scatter_tokens(Tensor tokens, Tensor ids_restore, Tensor mask_token) -> Tensor");
  // Backward of both: rows of grad (B, M, D) added into (B, num_rows, D) at ids, or summed into
  // (1, num_rows, D) when sum_batch; rows with ids >= num_rows summed into the second output (D).
  m.def(
      "scatter_add_tokens(Tensor grad, Tensor ids, int num_rows, bool sum_batch) -> "
      "(Tensor, Tensor)");

  // MAE's forward_loss with the target patchified inside the kernel: each masked patch of
  // `images` in (t, p, q, C) order, standardised when norm_pix, against pred (B, L, t*p*p*C);
  // squared error averaged per patch, then over masked patches: sum(e * mask) / sum(mask).
  // Returns a 0-dim float32 tensor (float64 for a float64 pred).
  m.def(
      "masked_patch_loss(Tensor pred, Tensor images, Tensor mask, int patch_size, int tubelet, "
      "bool norm_pix, float eps) -> Tensor");
  // d loss / d pred for the upstream gradient `grad` (0-dim). The normalised target is recomputed
  // from `images` rather than saved, so the forward keeps no (B, L, P) tensor alive.
  m.def(
      "masked_patch_loss_backward(Tensor grad, Tensor pred, Tensor images, Tensor mask, "
      "int patch_size, int tubelet, bool norm_pix, float eps) -> Tensor");
}
