// In-place multi-tensor EMA on the CPU: teacher[i] = m * teacher[i] + (1 - m) * student[i].
//
// Floor: each parameter is read from teacher and student and written back to teacher once:
// 12 bytes/param with a float32 student, 10 with bfloat16/float16. The whole tensor list is one
// flat index space cut into grains for at::parallel_for, so a list of many small tensors keeps
// every core busy and a few huge tensors are split across cores.
// Limits: teacher float32; student float32, bfloat16 or float16 (one dtype per call); teacher and
// student dense with equal strides; momentum a 0-dim CPU tensor in [0, 1] (checked in Python).
#include "nexus_fast/ema.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "nexus_fast/cpu_clones.h"

namespace nexus_fast {
namespace {

// Elements per parallel_for grain: large enough to amortise the task, small enough to balance.
constexpr int64_t kGrain = 1 << 16;

// The update in torch.lerp's form, which is exact at both ends: weight 0 keeps the teacher and
// weight 1 copies the student. The branch is hoisted out of the loop by the caller.
template <bool kSmallWeight, typename student_t>
NEXUS_FAST_CPU_CLONES void lerp_span(float* __restrict__ teacher,
                                     const student_t* __restrict__ student, int64_t n,
                                     float weight) {
  for (int64_t j = 0; j < n; ++j) {
    const float t = teacher[j];
    const float s = static_cast<float>(student[j]);
    teacher[j] = kSmallWeight ? t + weight * (s - t) : s - (s - t) * (1.0f - weight);
  }
}

template <typename student_t>
void ema_group(at::TensorList teacher, at::TensorList student, float weight) {
  const size_t count = teacher.size();
  std::vector<float*> teacher_data(count);
  std::vector<const student_t*> student_data(count);
  std::vector<int64_t> offsets(count + 1, 0);  // offsets[i]: first flat index of tensor i
  for (size_t i = 0; i < count; ++i) {
    teacher_data[i] = teacher[i].data_ptr<float>();
    student_data[i] = student[i].const_data_ptr<student_t>();
    offsets[i + 1] = offsets[i] + teacher[i].numel();
  }
  const int64_t total = offsets.back();
  at::parallel_for(0, total, kGrain, [&](int64_t begin, int64_t end) {
    // The last tensor starting at or before `begin`; empty tensors are stepped over below.
    size_t i = std::upper_bound(offsets.begin(), offsets.end(), begin) - offsets.begin() - 1;
    for (int64_t position = begin; position < end; ++i) {
      const int64_t stop = std::min(end, offsets[i + 1]);
      const int64_t local = position - offsets[i];
      float* t = teacher_data[i] + local;
      const student_t* s = student_data[i] + local;
      if (weight < 0.5f) {
        lerp_span<true>(t, s, stop - position, weight);
      } else {
        lerp_span<false>(t, s, stop - position, weight);
      }
      position = stop;
    }
  });
}

void ema_update_cpu(at::TensorList teacher, at::TensorList student, const at::Tensor& momentum) {
  if (!check_ema_group(teacher, student, momentum)) {
    return;
  }
  TORCH_CHECK(teacher[0].device().is_cpu(), "ema_update_ (CPU kernel) got ", teacher[0].device());
  const float weight = static_cast<float>(1.0 - momentum.item<double>());
  dispatch_student_dtype(student[0].scalar_type(),
                         [&](auto tag) { ema_group<decltype(tag)>(teacher, student, weight); });
}

}  // namespace

TORCH_LIBRARY_IMPL(nexus_fast, CPU, m) {
  m.impl("ema_update_", &ema_update_cpu);
}

}  // namespace nexus_fast
