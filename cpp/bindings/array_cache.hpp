// Memory for the kernels' large output arrays, kept between calls for the next call of the same sizes.
//
// A training loop asks for arrays of the same sizes on every step. glibc serves blocks above its mmap threshold
// (at most 32 MiB) with fresh mappings and unmaps them on free, and trims the top of its heap for the others, so
// every call's outputs land on pages that the operating system must fault in and zero again. In this project's
// VM that was 6-10% of an LSTM call at T=10000, B=8, H=64 (system time), and about 2% at XL. Blocks of at least
// min_bytes are therefore taken from here; when their array dies the block comes back and waits, up to a limit
// on the bytes waiting, for the next request it fits. Arrays from here are as fresh as NumPy's own (no live
// array shares the block) and, like them, start uninitialised: every kernel writes all of its outputs.
#pragma once

#include <algorithm>
#include <cstddef>
#include <list>
#include <mutex>
#include <optional>
#include <vector>

#include <pybind11/stl.h>

#include "arrays.hpp"

namespace fastbptt::bindings {

class ArrayCache {
 public:
  /// Smaller arrays come from NumPy: glibc reuses such blocks, though it may trim them off the top of its heap
  /// (see backward_scratch.hpp for the core's own scratch).
  static constexpr std::size_t min_bytes = std::size_t(1) << 20;

  struct Stats {
    std::size_t limit, cached_bytes, cached_blocks, hits, misses;
  };

  /// The process's cache. It is never destroyed: arrays may outlive the module at interpreter exit.
  static ArrayCache& instance();

  /// A block of at least `bytes` (64-byte aligned); `capacity` receives its size, to be passed to give_back.
  /// Throws std::bad_alloc (MemoryError in Python) when the memory cannot be had.
  void* take(std::size_t bytes, std::size_t& capacity);

  /// Keeps the block for a later take, unless that would put more than the limit in the cache; then the least
  /// recently returned blocks are freed first.
  void give_back(void* block, std::size_t capacity) noexcept;

  /// The most bytes the cache keeps; 0 frees every cached block and keeps none.
  void set_limit(std::size_t bytes);
  /// Frees every cached block; the limit stays.
  void empty();
  Stats stats() const;

 private:
  struct Block {
    void* data;
    std::size_t capacity;
  };

  ArrayCache();
  void shrink_to(std::size_t bytes);  // with mutex_ held

  mutable std::mutex mutex_;
  std::list<Block> blocks_;  // least recently returned first
  std::size_t limit_, cached_bytes_ = 0, hits_ = 0, misses_ = 0;
};

/// A fresh C-contiguous array of the given shape: from NumPy when small, else a block of the ArrayCache that goes
/// back to it when the array dies.
template <class Scalar>
Array<Scalar> new_array(const std::vector<py::ssize_t>& shape) {
  std::size_t count = 1;
  for (const py::ssize_t side : shape) count *= static_cast<std::size_t>(side);
  if (count * sizeof(Scalar) < ArrayCache::min_bytes) return Array<Scalar>(shape);
  if (count > static_cast<std::size_t>(PTRDIFF_MAX) / sizeof(Scalar)) throw std::bad_alloc();
  struct Lease {
    void* data;
    std::size_t capacity;
  };
  auto* lease = new Lease{nullptr, 0};
  try {
    lease->data = ArrayCache::instance().take(count * sizeof(Scalar), lease->capacity);
  } catch (...) {
    delete lease;
    throw;
  }
  py::capsule owner(lease, [](void* pointer) {
    auto* ending = static_cast<Lease*>(pointer);
    ArrayCache::instance().give_back(ending->data, ending->capacity);
    delete ending;
  });
  return Array<Scalar>(shape, static_cast<Scalar*>(lease->data), owner);
}

/// An output the caller made (in a wavefront of layers, a forward's hs or a backward's dx, which the next layer
/// reads as this call writes it), checked to be writable and of `shape`; or a new one when none was given.
template <class Scalar>
Array<Scalar> given_or_new(const std::optional<Array<Scalar>>& given, const std::vector<py::ssize_t>& shape,
                           const char* name) {
  if (!given) return new_array<Scalar>(shape);
  const bool same_shape = given->ndim() == static_cast<py::ssize_t>(shape.size()) &&
                          std::equal(shape.begin(), shape.end(), given->shape());
  if (!same_shape || !given->writeable()) {
    throw py::value_error(std::string(name) + ": expected a writable array of the output's shape");
  }
  return *given;
}

/// The keyword arguments with which a forward binding takes part in a wavefront of layers: its hs (see
/// given_or_new) and the handoffs of x's steps and of hs's (fastbptt.StepHandoff or None).
#define FASTBPTT_WAVEFRONT_ARGS \
  py::arg("hs_out").noconvert() = py::none(), py::arg("input_ready") = py::none(), py::arg("output_ready") = py::none()

/// A backward binding's: its dx (the dhs of the layer below) and the handoffs of dhs's steps and of dx's.
#define FASTBPTT_BACKWARD_WAVEFRONT_ARGS \
  py::arg("dx_out").noconvert() = py::none(), py::arg("input_ready") = py::none(), py::arg("output_ready") = py::none()

}  // namespace fastbptt::bindings
