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
}
