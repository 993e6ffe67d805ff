// Describes the build of the core (see build_info.hpp); the values come from CMake and the compiler.
#include "fastbptt/build_info.hpp"

#include <Eigen/Core>

#include <string>

namespace fastbptt {

std::map<std::string, std::string> build_info() {
  std::string isa_macros;
  const auto add = [&isa_macros](const char* name) {
    if (!isa_macros.empty()) isa_macros += ' ';
    isa_macros += name;
  };
#if defined(__SSE2__)
  add("sse2");
#endif
#if defined(__AVX__)
  add("avx");
#endif
#if defined(__AVX2__)
  add("avx2");
#endif
#if defined(__FMA__)
  add("fma");
#endif
#if defined(__AVX512F__)
  add("avx512f");
#endif
#if defined(__ARM_NEON)
  add("neon");
#endif

#if defined(__clang__)
  const std::string compiler = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  const std::string compiler = std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
  const std::string compiler = "msvc " + std::to_string(_MSC_VER);
#else
  const std::string compiler = "unknown";
#endif

  return {
      {"version", FASTBPTT_VERSION},
      {"eigen_version", std::to_string(EIGEN_WORLD_VERSION) + "." + std::to_string(EIGEN_MAJOR_VERSION) + "." +
                            std::to_string(EIGEN_MINOR_VERSION)},
      {"eigen_source", FASTBPTT_EIGEN_SOURCE},
      {"isa_requested", FASTBPTT_ISA_REQUESTED},
      {"isa_compiled", isa_macros.empty() ? "none" : isa_macros},
      {"eigen_simd", Eigen::SimdInstructionSetsInUse()},
      {"compiler", compiler},
      {"build_type", FASTBPTT_BUILD_TYPE},
      {"threading", FASTBPTT_THREADING},
  };
}

}  // namespace fastbptt
