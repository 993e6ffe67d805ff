// How many threads the core's calls use (all cores by default).
#pragma once

namespace fastbptt {

/// Sets the number of threads of every later call (n >= 1; values above the number of cores oversubscribe).
/// Results are bit-identical run to run for a given thread count. Throws std::invalid_argument for n < 1.
/// Without OpenMP in the build, only n == 1 is accepted.
void set_num_threads(int n);

/// Undoes set_num_threads: every later call uses the default count again, OpenMP's (all cores, or
/// OMP_NUM_THREADS), read at each call, so that a process whose other libraries share the OpenMP runtime and set
/// its count (omp_set_num_threads) has the core follow them.
void reset_num_threads();

/// The number of threads the next call will use.
int get_num_threads();

/// The number of threads a call made from the calling thread uses: get_num_threads(), or 1 from inside an OpenMP
/// parallel region of more than one thread. A team's members may thus make independent calls side by side (say,
/// the two directions of a bidirectional layer, one per thread) without each starting a team of its own, the
/// rule Eigen's parallel products follow too. Such a call gives the bits of a one-thread call.
int call_threads();

}  // namespace fastbptt
