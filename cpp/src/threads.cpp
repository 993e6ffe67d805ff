// Thread count of the core: Eigen parallelises its matrix products with OpenMP when the build has it.
#include "fastbptt/threads.hpp"

#include <Eigen/Core>

#include <stdexcept>
#include <string>
#if defined(_OPENMP)
#include <omp.h>
#endif

namespace fastbptt {

void set_num_threads(int n) {
  if (n < 1) throw std::invalid_argument("n: the number of threads must be >= 1, got " + std::to_string(n));
#if defined(_OPENMP)
  Eigen::setNbThreads(n);
#else
  if (n != 1) {
    throw std::invalid_argument("n: this build of fastbptt has no OpenMP, so it runs on 1 thread; got " +
                                std::to_string(n));
  }
#endif
}

void reset_num_threads() {
#if defined(_OPENMP)
  // Eigen reads a count below 1 as none set: it then asks OpenMP (omp_get_max_threads()) at every call.
  Eigen::setNbThreads(0);
#endif
}

int get_num_threads() { return Eigen::nbThreads(); }

namespace {
thread_local int task_threads = 1;  // see TaskThreads
}  // namespace

int call_threads() {
#if defined(_OPENMP)
  // The test Eigen's products make (omp_get_num_threads() > 1): inside a team a call runs on its thread alone,
  // unless it is a task given a share of the threads (TaskThreads).
  if (omp_get_num_threads() > 1) return task_threads;
#endif
  return Eigen::nbThreads();
}

TaskThreads::TaskThreads(int n) : saved_(task_threads) {
  if (n < 1) throw std::invalid_argument("n: the number of threads must be >= 1, got " + std::to_string(n));
  task_threads = n;
}

TaskThreads::~TaskThreads() { task_threads = saved_; }

}  // namespace fastbptt
