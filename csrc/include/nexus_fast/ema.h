// What the CPU and CUDA EMA kernels share: argument checks and the student-dtype dispatch.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "nexus_fast/checks.h"

namespace nexus_fast {

// Checks one group (teacher float32, one student dtype, one device, shared dense layouts).
// Returns false when the group is empty: nothing to do.
inline bool check_ema_group(at::TensorList teacher, at::TensorList student,
                            const at::Tensor& momentum) {
  check_paired_lists(teacher, student, "teacher", "student");
  check_scalar_tensor(momentum, "momentum");
  if (teacher.empty()) {
    return false;
  }
  check_uniform_dtype(teacher, "teacher");
  check_uniform_dtype(student, "student");
  check_same_dense_layout(teacher, student, "teacher", "student");
  TORCH_CHECK(teacher[0].scalar_type() == at::kFloat,
              "the fused EMA keeps the teacher in float32, got ", teacher[0].scalar_type());
  for (size_t i = 1; i < teacher.size(); ++i) {
    TORCH_CHECK(teacher[i].device() == teacher[0].device(), "teacher[", i, "] is on ",
                teacher[i].device(), " but teacher[0] is on ", teacher[0].device(),
                "; one call covers one device");
  }
  return true;
}

// Calls body(student_t{}) with student_t the C++ type of the student dtype.
template <typename Body>
void dispatch_student_dtype(at::ScalarType dtype, Body&& body) {
  switch (dtype) {
    case at::kFloat:
      body(float{});
      break;
    case at::kBFloat16:
      body(c10::BFloat16{});
      break;
    case at::kHalf:
      body(c10::Half{});
      break;
    default:
      TORCH_CHECK(false, "student dtype ", dtype,
                  " is not supported; allowed: float32, bfloat16, float16");
  }
}

}  // namespace nexus_fast
