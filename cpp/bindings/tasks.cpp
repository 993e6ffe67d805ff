// Independent Python calls run side by side, one per thread of the core's team (the directions of a layer).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <exception>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "fastbptt/threads.hpp"

namespace py = pybind11;

namespace fastbptt::bindings {
namespace {

/// Calls every task and returns their results in order. With two threads or more, each thread of one OpenMP team
/// takes whole tasks: with no more threads than tasks, the core's calls inside a task run on their thread alone
/// (call_threads() == 1), so that two calls of one thread each keep both cores busy where one call of two threads
/// would wait at every step; with more threads than tasks, each task gets a share of them (the first ones one
/// more) for its calls' teams, nested in this one (TaskThreads). A task holds the GIL except inside the core's
/// calls, which release it. The first task (in order) that raised has its exception raised here, after every task
/// has ended.
py::list run_concurrently(const std::vector<py::function>& tasks) {
  const int count = static_cast<int>(tasks.size());
  std::vector<py::object> results(tasks.size());
  std::vector<std::exception_ptr> errors(tasks.size());
  const auto run = [&](int i) {  // with the GIL held
    try {
      results[i] = tasks[i]();
    } catch (...) {
      errors[i] = std::current_exception();
    }
  };
  const int threads = call_threads();
  if (count < 2 || threads < 2) {
    for (int i = 0; i < count; ++i) run(i);
  } else {
    py::gil_scoped_release release;
#if defined(_OPENMP)
    const int levels = omp_get_max_active_levels();  // nested teams need one active level more than this one
    if (threads > count) omp_set_max_active_levels(std::max(levels, omp_get_active_level() + 2));
#pragma omp parallel for schedule(static, 1) num_threads(std::min(threads, count))
#endif
    for (int i = 0; i < count; ++i) {
      const TaskThreads share(threads > count ? threads / count + (i < threads % count) : 1);
      // A thread of the team that never ran Python gets a thread state from pybind11 when it acquires the GIL,
      // deleted when it releases it: making and deleting it cost more than a small wavefront's whole time loop.
      // The state made on the thread's first task is kept for the thread's life (the team's threads live as long
      // as the process), so that its later tasks only take the GIL. The calling thread's own state is left alone.
      thread_local bool thread_state_kept = false;
      const bool keep_thread_state = !thread_state_kept && PyGILState_GetThisThreadState() == nullptr;
      py::gil_scoped_acquire acquire;
      if (keep_thread_state) {
        acquire.inc_ref();  // never back to zero: pybind11 does not delete the state
        thread_state_kept = true;
      }
      run(i);
    }
#if defined(_OPENMP)
    omp_set_max_active_levels(levels);
#endif
  }
  for (const auto& error : errors) {
    if (error) std::rethrow_exception(error);
  }
  py::list out;
  for (auto& result : results) out.append(std::move(result));
  return out;
}

}  // namespace

void bind_tasks(py::module_& m) {
  m.def("run_concurrently", &run_concurrently, py::arg("tasks"),
        "Calls every zero-argument callable, side by side when the core has 2 threads or more, each on one "
        "thread or, with more threads than tasks, on a share of them; returns their results in order.");
}

}  // namespace fastbptt::bindings
