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

/// The number of threads a call made from the calling thread uses: get_num_threads(), or, from inside an OpenMP
/// parallel region of more than one thread, 1 (or a task's share, TaskThreads). A team's members may thus make
/// independent calls side by side (say, the two directions of a bidirectional layer, one per thread) without each
/// starting a team of all the threads, the rule Eigen's parallel products follow too. Such a call gives the bits of
/// a one-thread call.
int call_threads();

/// While it lives, the calls of the calling thread from inside an OpenMP team of more than one thread use `n`
/// threads (call_threads() returns n there instead of 1), in teams nested in the enclosing one: a task that runs
/// side by side with others (fastbptt._core.run_concurrently, with more threads than tasks) gets its share of the
/// threads so. The time loops' results do not depend on it, and Eigen's products inside such a task still run on
/// its thread alone (Eigen parallelises only outside a parallel region), so a task gives one-thread bits. Throws
/// std::invalid_argument for n < 1.
class TaskThreads {
 public:
  explicit TaskThreads(int n);
  ~TaskThreads();
  TaskThreads(const TaskThreads&) = delete;
  TaskThreads& operator=(const TaskThreads&) = delete;

 private:
  int saved_;
};

}  // namespace fastbptt
