// How many threads the core's matrix products use (all cores by default).
#pragma once

namespace fastbptt {

/// Sets the number of threads of every later call (n >= 1; values above the number of cores oversubscribe).
/// Results are bit-identical run to run for a given thread count. Throws std::invalid_argument for n < 1.
/// Without OpenMP in the build, only n == 1 is accepted.
void set_num_threads(int n);

/// The number of threads the next call will use.
int get_num_threads();

}  // namespace fastbptt
