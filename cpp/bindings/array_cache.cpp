// The ArrayCache (see array_cache.hpp) and its functions in fastbptt._core.
#include "array_cache.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

#if defined(_WIN32)
#include <malloc.h>
#endif

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace fastbptt::bindings {
namespace {

constexpr std::size_t huge_page_bytes = std::size_t(2) << 20;

/// Sizes are rounded up to 64 KiB, so that requests of nearly the same size share blocks.
constexpr std::size_t block_granularity = std::size_t(1) << 16;

/// Blocks of 4 MiB and more start on a 2 MiB boundary and ask Linux for huge pages, as NumPy does for its own
/// large arrays: fewer page faults and TLB misses.
std::size_t block_alignment(std::size_t capacity) { return capacity >= 2 * huge_page_bytes ? huge_page_bytes : 64; }

/// 256 MiB, or a 64th of the physical memory when that is less: eight processes keep at most an eighth of the
/// memory waiting between steps, and from 8.5 GiB of memory on a step's outputs at the benchmark's shapes fit
/// (T = 10000, B = 8, H = 64 leaves 136 MiB waiting; with 8 GiB the limit is 128 MiB and part of them goes back).
std::size_t default_limit() {
  std::size_t limit = std::size_t(256) << 20;
#if defined(__linux__)
  const long pages = sysconf(_SC_PHYS_PAGES), page_bytes = sysconf(_SC_PAGESIZE);
  if (pages > 0 && page_bytes > 0) {
    limit = std::min(limit, static_cast<std::size_t>(pages) * static_cast<std::size_t>(page_bytes) / 64);
  }
#endif
  return limit;
}

void* allocate(std::size_t alignment, std::size_t bytes) {
#if defined(_WIN32)
  return _aligned_malloc(bytes, alignment);
#else
  void* data = nullptr;
  return posix_memalign(&data, alignment, bytes) == 0 ? data : nullptr;
#endif
}

void release(void* data) {
#if defined(_WIN32)
  _aligned_free(data);
#else
  std::free(data);
#endif
}

}  // namespace

ArrayCache::ArrayCache() : limit_(default_limit()) {}

ArrayCache& ArrayCache::instance() {
  static ArrayCache* const cache = new ArrayCache();
  return *cache;
}

void* ArrayCache::take(std::size_t bytes, std::size_t& capacity) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    // The smallest waiting block that fits, if it is at most a quarter larger than asked: a larger one would
    // hold memory that the array cannot use while a later, larger request may want it.
    auto best = blocks_.end();
    for (auto block = blocks_.begin(); block != blocks_.end(); ++block) {
      if (block->capacity >= bytes && block->capacity - bytes <= bytes / 4 &&
          (best == blocks_.end() || block->capacity < best->capacity)) {
        best = block;
      }
    }
    if (best != blocks_.end()) {
      void* data = best->data;
      capacity = best->capacity;
      cached_bytes_ -= capacity;
      blocks_.erase(best);
      ++hits_;
      return data;
    }
    ++misses_;
  }
  capacity = (bytes + block_granularity - 1) / block_granularity * block_granularity;
  const std::size_t alignment = block_alignment(capacity);
  void* data = allocate(alignment, capacity);
  if (data == nullptr) {  // the waiting blocks may be what stands in the way
    empty();
    data = allocate(alignment, capacity);
    if (data == nullptr) throw std::bad_alloc();
  }
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (alignment == huge_page_bytes) madvise(data, capacity, MADV_HUGEPAGE);  // advice only: failure is harmless
#endif
  return data;
}

void ArrayCache::give_back(void* block, std::size_t capacity) noexcept {
  std::lock_guard<std::mutex> lock(mutex_);
  if (capacity > limit_) {
    release(block);
    return;
  }
  shrink_to(limit_ - capacity);
  try {
    blocks_.push_back({block, capacity});
    cached_bytes_ += capacity;
  } catch (const std::bad_alloc&) {
    release(block);
  }
}

void ArrayCache::set_limit(std::size_t bytes) {
  std::lock_guard<std::mutex> lock(mutex_);
  limit_ = bytes;
  shrink_to(bytes);
}

void ArrayCache::empty() {
  std::lock_guard<std::mutex> lock(mutex_);
  shrink_to(0);
}

void ArrayCache::shrink_to(std::size_t bytes) {
  while (cached_bytes_ > bytes) {
    release(blocks_.front().data);
    cached_bytes_ -= blocks_.front().capacity;
    blocks_.pop_front();
  }
}

ArrayCache::Stats ArrayCache::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return {limit_, cached_bytes_, blocks_.size(), hits_, misses_};
}

namespace {

/// A fresh copy of a C-contiguous array, in memory from the cache when large (see new_array).
template <class Scalar>
Array<Scalar> copy_array(const Array<Scalar>& source) {
  const std::vector<py::ssize_t> shape(source.shape(), source.shape() + source.ndim());
  Array<Scalar> copy = new_array<Scalar>(shape);
  const std::size_t bytes = static_cast<std::size_t>(source.size()) * sizeof(Scalar);
  Scalar* destination = copy.mutable_data();
  const Scalar* origin = source.data();
  if (bytes > 0) {
    py::gil_scoped_release release;
    std::memcpy(destination, origin, bytes);
  }
  return copy;
}

}  // namespace

void bind_array_cache(py::module_& m) {
  m.def("copy_array", &copy_array<float>, py::arg("source").noconvert());
  m.def("copy_array", &copy_array<double>, py::arg("source").noconvert(),
        "A fresh writable copy of a C-contiguous float32 or float64 array; large ones take memory from the array "
        "cache, as the kernels' outputs do.");
  m.def(
      "set_array_cache_limit", [](std::size_t bytes) { ArrayCache::instance().set_limit(bytes); }, py::arg("bytes"),
      "The most bytes of freed output arrays kept for reuse; 0 frees them all and keeps none.");
  m.def(
      "empty_array_cache", [] { ArrayCache::instance().empty(); }, "Frees the cached blocks; the limit stays.");
  m.def(
      "array_cache_stats",
      [] {
        const ArrayCache::Stats s = ArrayCache::instance().stats();
        py::dict info;
        info["limit"] = s.limit;
        info["cached_bytes"] = s.cached_bytes;
        info["cached_blocks"] = s.cached_blocks;
        info["hits"] = s.hits;
        info["misses"] = s.misses;
        info["min_bytes"] = ArrayCache::min_bytes;
        return info;
      },
      "Limit, bytes and blocks waiting, and how many requests were served from the cache (hits) or not.");
}

}  // namespace fastbptt::bindings
