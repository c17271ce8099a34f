// `import nexus_fast._C` loads this shared library, which runs the TORCH_LIBRARY registrations
// of csrc/ops.cpp and the kernels; the module itself carries no Python functions (the operators
// live under torch.ops.nexus_fast). Kept apart from ops.cpp so the C++ tests link without Python.
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
