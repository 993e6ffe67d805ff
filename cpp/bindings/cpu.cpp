// The module fastbptt._cpu: which of the kernels' builds this CPU runs, asked before any of them is loaded (a
// build for an instruction set the CPU lacks may execute it as soon as it is loaded). Compiled for the baseline.
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace {

/// The instruction sets of FASTBPTT_MODULE_ISAS that the CPU and the operating system run, narrowest first.
py::list instruction_sets() {
  py::list runs;
  runs.append("baseline");
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
  // GCC's and Clang's checks include the operating system's support for the wider registers (XGETBV).
  __builtin_cpu_init();
  const bool fma = __builtin_cpu_supports("fma");
  if (fma && __builtin_cpu_supports("avx2")) runs.append("avx2");
  if (fma && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw")) {
    runs.append("avx512");
  }
#endif
  return runs;
}

}  // namespace

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "Which builds of fastbptt's kernels this CPU runs.";
  m.def("instruction_sets", &instruction_sets,
        "The instruction sets of the kernels' builds that this CPU runs, narrowest first (baseline always).");
}
