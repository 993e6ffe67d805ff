// The backward passes' block scratch, kept by each thread for its next call (private to the core).
//
// A backward call needs one block of dZ and of the previous states (backward_block_steps() rows each). Allocated
// and freed by every call, at small shapes these blocks come from the top of glibc's heap, which glibc trims once
// enough of it is free: the next call then faults in and zeroes fresh pages. That was about 300 page faults per
// LSTM forward + backward at T=50, B=16, H=32 in a training loop, 13-20% of its time on a 2-core VM. Each thread
// therefore keeps its matrices for the next call, unless they grew beyond kept_bytes (then the faults are small
// beside the call's arithmetic, and the memory goes back at once).
#pragma once

#include <cstddef>

#include "fastbptt/types.hpp"

namespace fastbptt::detail {

template <class Scalar>
class BackwardScratch {
 public:
  static constexpr std::size_t kept_bytes = std::size_t(16) << 20;

  /// Sizes this thread's matrices: dZ [rows, dz_columns] and the previous states [rows, state_columns], contents
  /// unspecified. One BackwardScratch per thread at a time (a backward call does not nest another).
  BackwardScratch(Index rows, Index dz_columns, Index state_columns) : kept_(thread_matrices()) {
    kept_.dZ.resize(rows, dz_columns);
    kept_.previous_states.resize(rows, state_columns);
  }
  ~BackwardScratch() {
    if (static_cast<std::size_t>(kept_.dZ.size() + kept_.previous_states.size()) * sizeof(Scalar) > kept_bytes) {
      kept_.dZ.resize(0, 0);
      kept_.previous_states.resize(0, 0);
    }
  }
  BackwardScratch(const BackwardScratch&) = delete;
  BackwardScratch& operator=(const BackwardScratch&) = delete;

  RowMatrix<Scalar>& dZ() { return kept_.dZ; }
  RowMatrix<Scalar>& previous_states() { return kept_.previous_states; }

 private:
  struct Matrices {
    RowMatrix<Scalar> dZ, previous_states;
  };
  static Matrices& thread_matrices() {
    static thread_local Matrices matrices;
    return matrices;
  }
  Matrices& kept_;
};

}  // namespace fastbptt::detail
