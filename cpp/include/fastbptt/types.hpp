// Shared vocabulary of the core: matrix aliases over row-major Eigen storage, sizes, activations, shape checks.
#pragma once

#include <Eigen/Core>

#include <stdexcept>
#include <string>

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

/// Per-sequence lengths of a variable-length batch: B values in 1..T, in any order. Sequence b runs steps
/// 0 .. lengths[b]-1 only; its outputs after that are zero and it receives no gradient there. An empty vector
/// means every sequence runs all T steps.
using IndexVector = Eigen::Matrix<Index, 1, Eigen::Dynamic>;
using ConstLengthsRef = const Eigen::Ref<const IndexVector>&;

/// Sizes of one call: T time steps, B sequences in the batch, D input features, H hidden units.
/// Sequences are time-major: step t of a `[T*B, D]` matrix is rows t*B .. t*B+B-1.
struct Shape {
  Index T = 0;
  Index B = 0;
  Index D = 0;
  Index H = 0;
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

}  // namespace detail
}  // namespace fastbptt
