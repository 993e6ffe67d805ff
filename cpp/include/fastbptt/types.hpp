// Shared vocabulary of the core: matrix aliases over row-major Eigen storage, sizes, activations, shape checks.
#pragma once

#include <Eigen/Core>

#include <atomic>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace fastbptt {

using Index = Eigen::Index;

/// Row-major dense matrix: a C-contiguous NumPy array of shape [rows, cols] maps onto it without a copy.
template <class Scalar>
using RowMatrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class Scalar>
using RowVector = Eigen::Matrix<Scalar, 1, Eigen::Dynamic>;

/// Read-only view of a row-major matrix (any outer stride, unit inner stride).
template <class Scalar>
using ConstMatrixRef = const Eigen::Ref<const RowMatrix<Scalar>>&;
/// Writable view of a row-major matrix.
template <class Scalar>
using MatrixRef = Eigen::Ref<RowMatrix<Scalar>>;
template <class Scalar>
using ConstVectorRef = const Eigen::Ref<const RowVector<Scalar>>&;
template <class Scalar>
using VectorRef = Eigen::Ref<RowVector<Scalar>>;

/// A view of a row-major matrix, read-only (`Element` = const Scalar) or writable (`Element` = Scalar), that a
/// struct of arguments holds as a named member. It points at memory the caller owns and copies nothing. It starts
/// empty (0 x 0), and assigning a matrix to it points it at that matrix (Eigen::Ref's assignment would copy the
/// elements instead), so that the members of an argument struct are set one by one, each by its name.
/// It binds to any directly addressable row-major Eigen object whose rows are contiguous (matrices, maps, Refs,
/// blocks of them), and not to a temporary matrix, which would be gone before the call.
template <class Element>
class MatrixView {
 public:
  using Scalar = std::remove_const_t<Element>;
  using Map = Eigen::Map<std::conditional_t<std::is_const_v<Element>, const RowMatrix<Scalar>, RowMatrix<Scalar>>, 0,
                         Eigen::OuterStride<>>;

  MatrixView() = default;
  template <class Derived>
  MatrixView(const Eigen::DenseBase<Derived>& m)  // NOLINT(google-explicit-constructor): binds like Eigen::Ref
      : data_(const_cast<Element*>(in_memory(m.derived()).data())),
        rows_(m.rows()),
        cols_(m.cols()),
        stride_(m.derived().outerStride()) {}
  template <class Derived>
  MatrixView(Eigen::PlainObjectBase<Derived>&&) = delete;
  /// A read-only view of a writable one (not the other way round).
  template <class Other, class = std::enable_if_t<std::is_const_v<Element> && !std::is_const_v<Other>>>
  MatrixView(const MatrixView<Other>& other)  // NOLINT(google-explicit-constructor)
      : data_(other.data()), rows_(other.rows()), cols_(other.cols()), stride_(other.outer_stride()) {}

  Index rows() const { return rows_; }
  Index cols() const { return cols_; }
  Index outer_stride() const { return stride_; }
  Element* data() const { return data_; }
  bool empty() const { return rows_ == 0 || cols_ == 0; }
  /// The viewed matrix as an Eigen object.
  Map map() const { return Map(data_, rows_, cols_, Eigen::OuterStride<>(stride_)); }

 private:
  template <class Derived>
  static const Derived& in_memory(const Derived& m) {
    static_assert(int(Derived::Flags) & Eigen::DirectAccessBit, "MatrixView: a matrix in memory, not an expression");
    static_assert(Derived::IsRowMajor, "MatrixView: row-major storage");
    static_assert(std::is_const_v<Element> || (int(Derived::Flags) & Eigen::LvalueBit),
                  "MatrixView: a writable view of read-only memory");
    if (m.innerStride() != 1 && m.cols() > 1) throw std::invalid_argument("MatrixView: a row must be contiguous");
    return m;
  }

  Element* data_ = nullptr;
  Index rows_ = 0, cols_ = 0, stride_ = 0;
};

/// A view of a contiguous row vector (b [G*H], db [G*H], lengths [B]); otherwise as MatrixView.
template <class Element>
class VectorView {
 public:
  using Scalar = std::remove_const_t<Element>;
  using Map = Eigen::Map<std::conditional_t<std::is_const_v<Element>, const RowVector<Scalar>, RowVector<Scalar>>>;

  VectorView() = default;
  template <class Derived>
  VectorView(const Eigen::DenseBase<Derived>& v)  // NOLINT(google-explicit-constructor): binds like Eigen::Ref
      : data_(const_cast<Element*>(in_memory(v.derived()).data())), size_(v.size()) {}
  template <class Derived>
  VectorView(Eigen::PlainObjectBase<Derived>&&) = delete;
  template <class Other, class = std::enable_if_t<std::is_const_v<Element> && !std::is_const_v<Other>>>
  VectorView(const VectorView<Other>& other)  // NOLINT(google-explicit-constructor)
      : data_(other.data()), size_(other.size()) {}

  Index size() const { return size_; }
  Element* data() const { return data_; }
  bool empty() const { return size_ == 0; }
  Map map() const { return Map(data_, size_); }

 private:
  template <class Derived>
  static const Derived& in_memory(const Derived& v) {
    static_assert(int(Derived::Flags) & Eigen::DirectAccessBit, "VectorView: a vector in memory, not an expression");
    static_assert(Derived::IsVectorAtCompileTime, "VectorView: a vector");
    static_assert(std::is_const_v<Element> || (int(Derived::Flags) & Eigen::LvalueBit),
                  "VectorView: a writable view of read-only memory");
    if (v.innerStride() != 1 && v.size() > 1) throw std::invalid_argument("VectorView: elements must be contiguous");
    return v;
  }

  Element* data_ = nullptr;
  Index size_ = 0;
};

/// Per-sequence lengths of a variable-length batch: B values in 1..T, in any order. Sequence b runs steps
/// 0 .. lengths[b]-1 only; its outputs after that are zero and it receives no gradient there. An empty vector
/// means every sequence runs all T steps.
using IndexVector = Eigen::Matrix<Index, 1, Eigen::Dynamic>;
using ConstLengthsRef = const Eigen::Ref<const IndexVector>&;

/// What a backward call does besides the gradients every call computes; alike for every cell.
template <class Scalar>
struct BackwardOptions {
  /// Add this call's weight gradients to the arrays given instead of overwriting them. With segments that start at
  /// multiples of backward_block_steps(B, dZ columns), run last first with the initial-state gradients passed on
  /// as the next segment's upstream gradients, the sums have the bits of one call over the whole sequence.
  bool accumulate = false;
  /// [T+1, B] out, optional (empty: not computed): ||dL/dh_k||_2 for k = 0 .. T (k = 0: the initial state), what
  /// BPTT carries back to each step; 0 past a sequence's length.
  MatrixView<Scalar> dh_norms;
  /// Compute dx. false (the input needs no gradient): the products dZ W_xᵀ are skipped, and the gradients' dx may
  /// be empty; it is not written.
  bool need_dx = true;
  /// Compute the weight gradients (dW_x, dW_h, db, and a cell's others: the GRU's db_hn, a projection's dW_hr,
  /// the layer-normalised LSTM's gammas and beta). false (frozen weights): their products
  /// and column sums are skipped, and their views may be empty; they are not written, with accumulate neither.
  /// The initial-state gradients and the recursion through time are computed either way.
  bool need_weight_gradients = true;
  /// [T*B, dZ columns] out, optional (empty: not written): every step's dZ, the gradient of its pre-activations in
  /// the cell's layout (the columns its backward_block_steps counts), for weight gradients formed elsewhere from
  /// these rows, the inputs and the previous states (a caller that defers them over many one-step calls). Rows of
  /// sequences past their length are zero.
  MatrixView<Scalar> dz;
};

/// Sizes of one call: T time steps, B sequences in the batch, D input features, H hidden units.
/// Sequences are time-major: step t of a `[T*B, D]` matrix is rows t*B .. t*B+B-1.
struct Shape {
  Index T = 0;
  Index B = 0;
  Index D = 0;
  Index H = 0;
};

namespace detail {
template <class Scalar>
class PackedWeights;
}  // namespace detail

/// A cell's weight matrices packed for the products of its time loops, made once by the cell's `pack` and kept
/// across calls. A forward or backward given it skips packing the weights, which for calls of a few steps (one
/// step at a time: autoregressive generation, a loop of step cells) costs as much as their arithmetic; the results
/// have the bits of a call that packs. It holds copies: a call given it must be given the weights it was made from
/// (their shapes are checked, not their values), and after the weights change it is stale until packed again.
/// Copies share the packed matrices, which nothing changes; an empty one (the default) means "pack in the call".
template <class Scalar>
class Packed {
 public:
  using Parts = std::vector<detail::PackedWeights<Scalar>>;

  Packed() = default;
  explicit Packed(std::shared_ptr<const Parts> parts) : parts_(std::move(parts)) {}

  bool empty() const { return parts_ == nullptr; }
  /// The packed matrices in the order the cell's `pack` made them (the core's business).
  const Parts& parts() const { return *parts_; }

 private:
  std::shared_ptr<const Parts> parts_;
};

/// Steps handed from one time loop to another that runs at the same time on another thread: the layers of a stack
/// as a wavefront, layer l+1 computing step t while layer l computes step t+1. The producer publishes how many of
/// its steps are written; the consumer waits before a step reads them.
class StepHandoff {
 public:
  /// Steps 0 .. steps-1 are written: a thread that waits for them sees what they wrote.
  void publish(Index steps) noexcept { steps_.store(steps, std::memory_order_release); }
  /// Returns once `steps` steps are published (spinning briefly, then yielding the core).
  void wait_for(Index steps) const noexcept;
  /// Publishes every step, so that no consumer waits for ever after the producer failed (what it wrote is then
  /// undefined, and so is what the consumer computes from it).
  void abandon() noexcept { publish(std::numeric_limits<Index>::max()); }
  Index published() const noexcept { return steps_.load(std::memory_order_acquire); }

 private:
  std::atomic<Index> steps_{0};
};

/// The handoffs of one call in a wavefront; none (the default): the call reads all of its input from the start and
/// publishes nothing. A forward's input is x, its output hs, steps counted from the first; a backward's input is
/// dhs (the layer above's dx), its output dx, steps counted from the last.
struct Handoffs {
  const StepHandoff* input = nullptr;  ///< the steps of the input, written by another call as this one runs
  StepHandoff* output = nullptr;       ///< the steps of the output, published as this call writes them
};

/// Element-wise nonlinearity phi of the plain RNN.
enum class Activation { tanh, relu, sigmoid };

/// Parses "tanh", "relu" or "sigmoid"; throws std::invalid_argument otherwise.
Activation parse_activation(const std::string& name);
const char* activation_name(Activation activation);

/// Time steps per block of the backward pass (see time_blocks.hpp in the sources): at least 256 rows per block
/// so that its products run efficiently, and a block of dZ of about 2^18 scalars so that it stays in cache. It does
/// not depend on T: backward calls over segments that start at multiples of it, with the weight gradients
/// accumulated, give the same bits as one call (checkpointed BPTT).
Index backward_block_steps(Index batch, Index gate_columns);

/// Scalars the core allocates to pack a [rows, columns] weight matrix of `Scalar` (float or double) in `groups` equal
/// column groups (the gate blocks) for its products: the time loops pack their weights once per call, each group
/// padded to whole SIMD packets of this build. For memory accounting. Throws std::invalid_argument for negative
/// sizes or groups that do not divide columns, std::overflow_error when the count exceeds Index.
template <class Scalar>
Index packed_weights_scalars(Index rows, Index columns, Index groups);

namespace detail {

/// Throws std::invalid_argument unless T, B, D, H are all >= 1.
void check_sizes(const Shape& shape);

/// Throws std::invalid_argument naming `name`, the expected and the actual shape when they differ.
void check_shape(const char* name, Index rows, Index cols, Index expected_rows, Index expected_cols);

/// The B rows of the state before step t (0-based): `initial` for t == 0, else block t-1 of `states` [T*B, H].
template <class Scalar>
Eigen::Map<const RowMatrix<Scalar>, 0, Eigen::OuterStride<>> previous_state(
    const Eigen::Ref<const RowMatrix<Scalar>>& initial, const Eigen::Ref<const RowMatrix<Scalar>>& states, Index t,
    Index B) {
  const Scalar* source = t == 0 ? initial.data() : states.data() + (t - 1) * B * states.outerStride();
  const Index stride = t == 0 ? initial.outerStride() : states.outerStride();
  return {source, B, states.cols(), Eigen::OuterStride<>(stride)};
}

/// sums = column sums of m, each added up row after row. Unlike Eigen's colwise().sum(), whose grouping of the
/// terms depends on the memory alignment of `sums`, the result does not change with where NumPy put the arrays.
template <class Scalar>
void column_sums(const Eigen::Ref<const RowMatrix<Scalar>>& m, Eigen::Ref<RowVector<Scalar>> sums) {
  sums.setZero();
  for (Index r = 0; r < m.rows(); ++r) sums += m.row(r);
}

template <class Derived>
void check_shape(const char* name, const Eigen::DenseBase<Derived>& m, Index expected_rows, Index expected_cols) {
  check_shape(name, m.rows(), m.cols(), expected_rows, expected_cols);
}

template <class Element>
void check_shape(const char* name, const MatrixView<Element>& m, Index expected_rows, Index expected_cols) {
  check_shape(name, m.rows(), m.cols(), expected_rows, expected_cols);
}

/// Vectors are checked as [1, size] matrices.
template <class Element>
void check_shape(const char* name, const VectorView<Element>& v, Index expected_rows, Index expected_cols) {
  check_shape(name, 1, v.size(), expected_rows, expected_cols);
}

}  // namespace detail
}  // namespace fastbptt
