// Independent Python calls run side by side, one per thread of the core's team (the directions of a layer).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <exception>
#include <vector>

#include "fastbptt/threads.hpp"

namespace py = pybind11;

namespace fastbptt::bindings {
namespace {

/// Calls every task and returns their results in order. With as many threads as tasks (or more tasks than
/// threads), each thread of one OpenMP team takes whole tasks, and the core's calls inside a task run on their
/// thread alone (call_threads() == 1): two calls of one thread each, side by side, keep both cores busy where one
/// call of two threads would wait at every step. With more threads than tasks, the tasks run one after the other on
/// the whole team instead, so that no core idles. A task holds the GIL except inside the core's calls, which
/// release it. The first task (in order) that raised has its exception raised here, after every task has ended.
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
  if (count < 2 || threads < 2 || threads > count) {
    for (int i = 0; i < count; ++i) run(i);
  } else {
    py::gil_scoped_release release;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static, 1) num_threads(threads)
#endif
    for (int i = 0; i < count; ++i) {
      py::gil_scoped_acquire acquire;
      run(i);
    }
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
        "Calls every zero-argument callable, side by side when the core has 2..len(tasks) threads, each on one "
        "thread; returns their results in order.");
}

}  // namespace fastbptt::bindings
