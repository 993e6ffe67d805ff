# Chooses the instruction-set flags of the C++ package's core library (fastbptt::core), each set tested by running
# a probe on the build machine, not assumed: AVX-512 (F, DQ, VL, BW) with FMA when FASTBPTT_AVX512 is on (the
# default) and the machine runs it, else AVX2+FMA when it runs them, else the compiler's baseline; the baseline
# always when FASTBPTT_PORTABLE is on. The probes are skipped when the library is not built (FASTBPTT_INSTALL off
# and FASTBPTT_BUILD_PYTHON on: a wheel, whose module has builds of its own, below).
# Both probes run whatever FASTBPTT_AVX512 says; with it off, the AVX-512 result is not used.
# Sets FASTBPTT_ISA_FLAGS (compile options) and FASTBPTT_ISA_DESCRIPTION. Never adds fast-math: NaN must propagate.

include(CheckCXXSourceRuns)

set(FASTBPTT_ISA_FLAGS "")
set(FASTBPTT_ISA_DESCRIPTION "baseline")
if(FASTBPTT_PORTABLE)
  set(FASTBPTT_ISA_DESCRIPTION "baseline (FASTBPTT_PORTABLE)")
elseif(NOT FASTBPTT_INSTALL AND FASTBPTT_BUILD_PYTHON)
  set(FASTBPTT_ISA_DESCRIPTION "baseline (fastbptt::core not built: FASTBPTT_INSTALL is off)")
elseif(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang" AND CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64|amd64")
  set(CMAKE_REQUIRED_FLAGS "-mavx512f -mavx512dq -mavx512vl -mavx512bw -mfma")
  check_cxx_source_runs([=[
    #include <immintrin.h>
    int main() {
      if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512dq") ||
          !__builtin_cpu_supports("avx512vl") || !__builtin_cpu_supports("avx512bw")) return 1;
      volatile float a = 1.5f;
      __m512 v = _mm512_fmadd_ps(_mm512_set1_ps(a), _mm512_set1_ps(2.0f), _mm512_set1_ps(1.0f));
      return _mm512_reduce_add_ps(v) == 64.0f ? 0 : 1;
    }]=] FASTBPTT_HOST_HAS_AVX512)
  set(CMAKE_REQUIRED_FLAGS "-mavx2 -mfma")
  check_cxx_source_runs([=[
    #include <immintrin.h>
    int main() {
      if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return 1;
      volatile float a = 1.5f;
      __m256 v = _mm256_fmadd_ps(_mm256_set1_ps(a), _mm256_set1_ps(2.0f), _mm256_set1_ps(1.0f));
      return _mm256_cvtss_f32(v) == 4.0f ? 0 : 1;
    }]=] FASTBPTT_HOST_HAS_AVX2_FMA)
  unset(CMAKE_REQUIRED_FLAGS)
  if(FASTBPTT_HOST_HAS_AVX512 AND FASTBPTT_AVX512)
    set(FASTBPTT_ISA_FLAGS -mavx512f -mavx512dq -mavx512vl -mavx512bw -mfma)
    set(FASTBPTT_ISA_DESCRIPTION "avx512+fma (detected on the build machine)")
  elseif(FASTBPTT_HOST_HAS_AVX2_FMA)
    # Not -march=native: GCC 12 then also implies -mtune=znver3 on Zen 3, which slows Eigen's GEMM here.
    set(FASTBPTT_ISA_FLAGS -mavx2 -mfma)
    set(FASTBPTT_ISA_DESCRIPTION "avx2+fma (detected on the build machine)")
  endif()
endif()
message(STATUS "fastbptt: instruction set ${FASTBPTT_ISA_DESCRIPTION}")

# The Python module is built once per instruction set instead, and fastbptt/_core.py loads at import the widest
# build the CPU runs, so that one wheel runs on any x86-64 machine. FASTBPTT_MODULE_ISAS lists the builds (baseline,
# avx2, avx512; each with its flags in FASTBPTT_ISA_FLAGS_<name>); empty, its default, means all three on x86-64
# with GCC or Clang, worked out at every configure: avx2 when the compiler takes its flags
# (FASTBPTT_COMPILER_HAS_AVX2_FMA), avx512 when FASTBPTT_AVX512 is on and the compiler takes its flags
# (FASTBPTT_COMPILER_HAS_AVX512); nothing is run. Baseline alone elsewhere and with FASTBPTT_PORTABLE. The list
# chosen goes to FASTBPTT_MODULE_ISAS_EFFECTIVE.
include(CheckCXXCompilerFlag)
set(FASTBPTT_ISA_FLAGS_baseline "")
set(FASTBPTT_ISA_FLAGS_avx2 -mavx2 -mfma)
set(FASTBPTT_ISA_FLAGS_avx512 -mavx512f -mavx512dq -mavx512vl -mavx512bw -mfma)
set(FASTBPTT_MODULE_ISAS "" CACHE STRING
    "Builds of the Python module, one per instruction set (baseline;avx2;avx512); empty: all the compiler can make")
if(FASTBPTT_MODULE_ISAS)
  set(FASTBPTT_MODULE_ISAS_EFFECTIVE ${FASTBPTT_MODULE_ISAS})
  if(FASTBPTT_PORTABLE AND NOT FASTBPTT_MODULE_ISAS STREQUAL "baseline")
    message(FATAL_ERROR "FASTBPTT_MODULE_ISAS=${FASTBPTT_MODULE_ISAS} with FASTBPTT_PORTABLE: choose one of them")
  endif()
  if(NOT "baseline" IN_LIST FASTBPTT_MODULE_ISAS)
    message(WARNING "FASTBPTT_MODULE_ISAS=${FASTBPTT_MODULE_ISAS} has no baseline build: fastbptt will not import "
                    "on a CPU that runs none of these")
  endif()
else()
  set(FASTBPTT_MODULE_ISAS_EFFECTIVE baseline)
  if(NOT FASTBPTT_PORTABLE AND CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang"
     AND CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64|amd64")
    check_cxx_compiler_flag("-mavx2 -mfma" FASTBPTT_COMPILER_HAS_AVX2_FMA)
    check_cxx_compiler_flag("-mavx512f -mavx512dq -mavx512vl -mavx512bw -mfma" FASTBPTT_COMPILER_HAS_AVX512)
    if(FASTBPTT_COMPILER_HAS_AVX2_FMA)
      list(APPEND FASTBPTT_MODULE_ISAS_EFFECTIVE avx2)
    endif()
    if(FASTBPTT_COMPILER_HAS_AVX512 AND FASTBPTT_AVX512)
      list(APPEND FASTBPTT_MODULE_ISAS_EFFECTIVE avx512)
    endif()
  endif()
endif()
if(FASTBPTT_BUILD_PYTHON)
  message(STATUS "fastbptt: Python module builds ${FASTBPTT_MODULE_ISAS_EFFECTIVE}")
endif()
