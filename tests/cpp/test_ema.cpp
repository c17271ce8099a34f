// C++ unit tests of the CPU EMA kernel, called through the dispatcher as Python would call it.
// Plain asserts keep the test free of a test framework; a failure prints and exits non-zero.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

int failures = 0;

void expect(bool condition, const std::string& what) {
  if (!condition) {
    std::fprintf(stderr, "FAILED: %s\n", what.c_str());
    ++failures;
  }
}

void ema(std::vector<at::Tensor>& teacher, const std::vector<at::Tensor>& student, double m) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("nexus_fast::ema_update_", "")
                       .typed<void(at::TensorList, at::TensorList, const at::Tensor&)>();
  op.call(teacher, student, at::scalar_tensor(m, at::kDouble));
}

// Odd sizes, one tensor larger than a parallel grain, and an empty tensor in the middle.
void test_matches_formula(at::ScalarType student_dtype) {
  std::vector<at::Tensor> teacher, student, expected;
  for (int64_t n : {1, 3, 0, 1023, 65537, 200003}) {
    teacher.push_back(at::randn({n}));
    student.push_back(at::randn({n}).to(student_dtype));
    expected.push_back(teacher.back() * 0.9 + student.back().to(at::kFloat) * 0.1);
  }
  ema(teacher, student, 0.9);
  for (size_t i = 0; i < teacher.size(); ++i) {
    expect(at::allclose(teacher[i], expected[i], 1e-6, 1e-6),
           "ema matches m*t + (1-m)*s for tensor " + std::to_string(i) + " of dtype " +
               std::string(c10::toString(student_dtype)));
  }
}

void test_endpoints_are_exact() {
  std::vector<at::Tensor> teacher{at::randn({4097}) * 1e8};
  const std::vector<at::Tensor> student{at::randn({4097}) * 1e-8};
  const at::Tensor original = teacher[0].clone();
  ema(teacher, student, 1.0);
  expect(at::equal(teacher[0], original), "momentum 1 leaves the teacher unchanged");
  ema(teacher, student, 0.0);
  expect(at::equal(teacher[0], student[0]), "momentum 0 copies the student exactly");
}

void test_rejects_mismatched_lengths() {
  std::vector<at::Tensor> teacher{at::zeros({3}), at::zeros({3})};
  const std::vector<at::Tensor> student{at::zeros({3})};
  bool raised = false;
  try {
    ema(teacher, student, 0.5);
  } catch (const c10::Error& error) {
    raised = std::string(error.what()).find("has 2 tensors but student has 1") != std::string::npos;
  }
  expect(raised, "different list lengths raise an error naming both lengths");
}

}  // namespace

int main() {
  test_matches_formula(at::kFloat);
  test_matches_formula(at::kBFloat16);
  test_matches_formula(at::kHalf);
  test_endpoints_are_exact();
  test_rejects_mismatched_lengths();
  if (failures == 0) {
    std::printf("cpu kernel tests: all passed\n");
  }
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
