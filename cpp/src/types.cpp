// Activation names, the sizes of blocks and packed weights, and the shape checks shared by every kernel.
#include "fastbptt/types.hpp"

#include <algorithm>
#include <sstream>
#include <thread>

#include "packed_product.hpp"

namespace fastbptt {

void StepHandoff::wait_for(Index steps) const noexcept {
  // A step of the layer below lasts microseconds: spin that long before giving the core away.
  for (int spins = 0; steps_.load(std::memory_order_acquire) < steps; ++spins) {
    if (spins >= 4096) std::this_thread::yield();
  }
}

Activation parse_activation(const std::string& name) {
  if (name == "tanh") return Activation::tanh;
  if (name == "relu") return Activation::relu;
  if (name == "sigmoid") return Activation::sigmoid;
  // Only printable ASCII is quoted back: the message becomes a Python str, which must be valid UTF-8.
  std::string shown;
  for (const char c : name) shown += (c >= 0x20 && c < 0x7f) ? std::string(1, c) : std::string("?");
  throw std::invalid_argument("activation: expected one of 'tanh', 'relu', 'sigmoid', got '" + shown + "'");
}

const char* activation_name(Activation activation) {
  switch (activation) {
    case Activation::tanh: return "tanh";
    case Activation::relu: return "relu";
    case Activation::sigmoid: return "sigmoid";
  }
  return "?";
}

Index backward_block_steps(Index batch, Index gate_columns) {
  const Index rows_per_step = std::max<Index>(1, batch);
  const Index for_products = (256 + rows_per_step - 1) / rows_per_step;
  // rows_per_step * gate_columns can pass int64; a step of more than 2^18 scalars gets no steps for the cache.
  const Index cache_scalars = Index(1) << 18, columns = std::max<Index>(1, gate_columns);
  const Index for_cache = columns > cache_scalars / rows_per_step ? 0 : cache_scalars / (rows_per_step * columns);
  return std::max({Index(1), for_products, for_cache});
}

template <class Scalar>
Index packed_weights_scalars(Index rows, Index columns, Index groups) {
  return detail::PackedWeights<Scalar>::scalars(rows, columns, groups);
}
template Index packed_weights_scalars<float>(Index, Index, Index);
template Index packed_weights_scalars<double>(Index, Index, Index);

namespace detail {

void check_sizes(const Shape& shape) {
  const struct {
    const char* name;
    Index value;
  } sizes[] = {{"T (time steps)", shape.T}, {"B (batch)", shape.B}, {"D (input features)", shape.D},
               {"H (hidden units)", shape.H}};
  for (const auto& size : sizes) {
    if (size.value < 1) {
      std::ostringstream message;
      message << size.name << " must be >= 1, got " << size.value;
      throw std::invalid_argument(message.str());
    }
  }
}

void check_shape(const char* name, Index rows, Index cols, Index expected_rows, Index expected_cols) {
  if (rows == expected_rows && cols == expected_cols) return;
  std::ostringstream message;
  message << name << ": expected shape [" << expected_rows << ", " << expected_cols << "], got [" << rows << ", "
          << cols << "]";
  throw std::invalid_argument(message.str());
}

}  // namespace detail
}  // namespace fastbptt
