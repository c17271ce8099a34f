// In-place multi-tensor EMA on CUDA: teacher[i] = m * teacher[i] + (1 - m) * student[i].
//
// Floor: 12 bytes/param with a float32 student (read 8, write 4), 10 with bfloat16/float16;
// on an H200 (~4.3 TB/s) ViT-B takes >= 0.24 ms. One launch covers the whole tensor list: the
// host writes a table of (teacher pointer, student pointer, numel) and a block -> (tensor, chunk)
// map, copies it to the device in one transfer, and every block updates one chunk of one tensor
// with 16-byte vector loads (a scalar loop handles unaligned tensors and the tail).
// Limits: teacher float32; student float32, bfloat16 or float16 (one dtype per launch);
// teacher and student dense with equal strides, on one device; momentum a 0-dim float tensor on
// the CPU or on that device.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>

#include "nexus_fast/ema.h"

namespace nexus_fast {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 1 << 16;  // elements per block: ~100 blocks per SM for ViT-B

// The device table, as offsets into one int64 buffer (one host-to-device copy per launch).
struct Table {
  const int64_t* teacher;       // (tensors,) teacher data pointers
  const int64_t* student;       // (tensors,) student data pointers
  const int64_t* numel;         // (tensors,)
  const int64_t* block_tensor;  // (blocks,) tensor index of each block
  const int64_t* block_start;   // (blocks,) first element of each block's chunk
};

// c10::Half and c10::BFloat16 convert to float on the device as well as on the host.
template <typename student_t>
__device__ __forceinline__ float to_float(student_t v) {
  return static_cast<float>(v);
}

// torch.lerp's form: exact at weight 0 (keeps teacher) and weight 1 (copies student).
__device__ __forceinline__ float lerp(float t, float s, float weight) {
  return weight < 0.5f ? fmaf(weight, s - t, t) : s - (s - t) * (1.0f - weight);
}

template <typename student_t>
__global__ void __launch_bounds__(kThreads)
    ema_kernel(Table table, const float* __restrict__ momentum_ptr, float momentum_value) {
  // 16 bytes of student per vector step: 4 (float32) or 8 (16-bit) elements.
  constexpr int kVec = 16 / sizeof(student_t);
  struct alignas(16) StudentPack {
    student_t v[kVec];
  };
  struct alignas(16) TeacherPack {
    float v[kVec];
  };

  const int64_t tensor = table.block_tensor[blockIdx.x];
  const int64_t start = table.block_start[blockIdx.x];
  const int64_t numel = table.numel[tensor];
  const int64_t stop = start + kChunk < numel ? start + kChunk : numel;
  float* teacher = reinterpret_cast<float*>(table.teacher[tensor]);
  const student_t* student = reinterpret_cast<const student_t*>(table.student[tensor]);
  const float weight = 1.0f - (momentum_ptr != nullptr ? *momentum_ptr : momentum_value);

  int64_t scalar_from = start;
  // Chunks start at multiples of kChunk, so one alignment test per tensor decides the path.
  const bool aligned = reinterpret_cast<uintptr_t>(teacher) % alignof(TeacherPack) == 0 &&
                       reinterpret_cast<uintptr_t>(student) % alignof(StudentPack) == 0;
  if (aligned) {
    const int64_t vector_stop = start + (stop - start) / kVec * kVec;
    for (int64_t i = start + int64_t(threadIdx.x) * kVec; i < vector_stop;
         i += int64_t(kThreads) * kVec) {
      const StudentPack s = *reinterpret_cast<const StudentPack*>(student + i);
      TeacherPack t = *reinterpret_cast<const TeacherPack*>(teacher + i);
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        t.v[j] = lerp(t.v[j], to_float(s.v[j]), weight);
      }
      *reinterpret_cast<TeacherPack*>(teacher + i) = t;
    }
    scalar_from = vector_stop;
  }
  for (int64_t i = scalar_from + threadIdx.x; i < stop; i += kThreads) {
    teacher[i] = lerp(teacher[i], to_float(student[i]), weight);
  }
}

template <typename student_t>
void launch(at::TensorList teacher, at::TensorList student, const at::Tensor& momentum) {
  const int64_t count = static_cast<int64_t>(teacher.size());
  int64_t blocks = 0;
  for (const auto& t : teacher) {
    blocks += (t.numel() + kChunk - 1) / kChunk;
  }
  if (blocks == 0) {
    return;
  }
  TORCH_CHECK(blocks < (int64_t(1) << 31), "too many chunks for one launch: ", blocks);
  at::Tensor host =
      at::empty({3 * count + 2 * blocks}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  int64_t* h = host.data_ptr<int64_t>();
  int64_t block = 0;
  for (int64_t i = 0; i < count; ++i) {
    h[i] = reinterpret_cast<int64_t>(teacher[i].data_ptr());
    h[count + i] = reinterpret_cast<int64_t>(student[i].const_data_ptr());
    h[2 * count + i] = teacher[i].numel();
    for (int64_t start = 0; start < teacher[i].numel(); start += kChunk, ++block) {
      h[3 * count + block] = i;
      h[3 * count + blocks + block] = start;
    }
  }
  // The pinned buffer stays alive until the copy has run: the caching host allocator records
  // the stream use of a pinned tensor that is the source of a non-blocking copy.
  at::Tensor device_table =
      host.to(at::TensorOptions().device(teacher[0].device()), /*non_blocking=*/true);
  const int64_t* d = device_table.const_data_ptr<int64_t>();
  const Table table{d, d + count, d + 2 * count, d + 3 * count, d + 3 * count + blocks};

  const float* momentum_ptr = nullptr;
  float momentum_value = 0.0f;
  if (momentum.is_cuda()) {
    TORCH_CHECK(momentum.device() == teacher[0].device() && momentum.scalar_type() == at::kFloat,
                "a CUDA momentum must be float32 on ", teacher[0].device(), ", got ",
                momentum.scalar_type(), " on ", momentum.device());
    momentum_ptr = momentum.const_data_ptr<float>();
  } else {
    momentum_value = static_cast<float>(momentum.item<double>());
  }
  ema_kernel<student_t>
      <<<static_cast<unsigned>(blocks), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          table, momentum_ptr, momentum_value);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void ema_update_cuda(at::TensorList teacher, at::TensorList student, const at::Tensor& momentum) {
  if (!check_ema_group(teacher, student, momentum)) {
    return;
  }
  const c10::cuda::CUDAGuard guard(teacher[0].device());
  dispatch_student_dtype(student[0].scalar_type(),
                         [&](auto tag) { launch<decltype(tag)>(teacher, student, momentum); });
}

}  // namespace

TORCH_LIBRARY_IMPL(nexus_fast, CUDA, m) {
  m.impl("ema_update_", &ema_update_cuda);
}

}  // namespace nexus_fast
