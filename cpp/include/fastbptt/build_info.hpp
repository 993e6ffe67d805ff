// What this build of the core is: version, Eigen, instruction set, compiler, threading.
#pragma once

#include <map>
#include <string>

namespace fastbptt {

/// Key/value description of the build, e.g. {"eigen_version": "3.4.1", "simd": "AVX SSE, ... FMA", ...}.
std::map<std::string, std::string> build_info();

}  // namespace fastbptt
