// Argument checks shared by the kernels. Every message names the offending index and value, so
// that a user can find the tensor in their parameter list.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace nexus_fast {

// Two tensor lists that an operator pairs element by element (teacher/student, ...).
inline void check_paired_lists(at::TensorList first, at::TensorList second, const char* first_name,
                               const char* second_name) {
  TORCH_CHECK(first.size() == second.size(), first_name, " has ", first.size(), " tensors but ",
              second_name, " has ", second.size());
  for (size_t i = 0; i < first.size(); ++i) {
    TORCH_CHECK(first[i].sizes() == second[i].sizes(), first_name, "[", i, "] has shape ",
                first[i].sizes(), " but ", second_name, "[", i, "] has shape ", second[i].sizes());
    TORCH_CHECK(first[i].device() == second[i].device(), first_name, "[", i, "] is on ",
                first[i].device(), " but ", second_name, "[", i, "] is on ", second[i].device());
  }
}

// Every tensor of a list has one dtype (the caller groups tensors by dtype).
inline void check_uniform_dtype(at::TensorList tensors, const char* name) {
  for (size_t i = 0; i < tensors.size(); ++i) {
    TORCH_CHECK(tensors[i].scalar_type() == tensors[0].scalar_type(), name, "[", i, "] has dtype ",
                tensors[i].scalar_type(), " but ", name, "[0] has ", tensors[0].scalar_type(),
                "; group tensors by dtype before calling");
  }
}

// Paired tensors that an elementwise kernel walks as flat memory: each dense (no gaps, no
// overlap, e.g. contiguous or channels-last) and laid out like its partner.
inline void check_same_dense_layout(at::TensorList first, at::TensorList second,
                                    const char* first_name, const char* second_name) {
  for (size_t i = 0; i < first.size(); ++i) {
    TORCH_CHECK(
        first[i].is_non_overlapping_and_dense() && first[i].strides() == second[i].strides(),
        first_name, "[", i, "] (strides ", first[i].strides(), ") and ", second_name, "[", i,
        "] (strides ", second[i].strides(), ") do not share one dense layout");
  }
}

// A 0-dim momentum/weight given as a tensor, so that a schedule does not recompile a graph.
inline void check_scalar_tensor(const at::Tensor& value, const char* name) {
  TORCH_CHECK(value.dim() == 0, name, " must be a 0-dim tensor, got shape ", value.sizes());
  TORCH_CHECK(at::isFloatingType(value.scalar_type()), name, " must be a floating tensor, got ",
              value.scalar_type());
}

// Every index of a CPU int64 tensor lies in [0, limit); the first one that does not is reported
// with its position as an IndexError, before any kernel reads or writes through it.
inline void check_indices(const at::Tensor& ids, int64_t limit, const char* name,
                          const char* what) {
  TORCH_CHECK(ids.scalar_type() == at::kLong, name, " must be int64, got ", ids.scalar_type());
  const at::Tensor flat = ids.contiguous();
  const int64_t* data = flat.const_data_ptr<int64_t>();
  const int64_t columns = ids.dim() > 0 ? ids.size(-1) : 1;
  for (int64_t i = 0; i < flat.numel(); ++i) {
    TORCH_CHECK_INDEX(data[i] >= 0 && data[i] < limit, name, "[", i / columns, ", ", i % columns,
                      "] = ", data[i], " is out of range for ", limit, " ", what);
  }
}

}  // namespace nexus_fast
