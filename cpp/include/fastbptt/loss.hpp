// The output layer and loss: o_t = h_t W_yh + b_y, softmax, cross-entropy summed (or averaged) over steps.
#pragma once

#include <cstdint>

#include "fastbptt/types.hpp"

namespace fastbptt::loss {

enum class Reduction { sum, mean };

/// Parses "sum" or "mean"; throws std::invalid_argument otherwise.
Reduction parse_reduction(const std::string& name);

/// Loss and gradients of the softmax/cross-entropy output layer over N = T*B rows:
///   o_n = h_n W_yh + b_y,  L = sum_n (logsumexp(o_n) - o_n[y_n])   ("mean" divides by the rows counted),
///   dO = softmax(O) - onehot(y) (scaled by 1/count for "mean"),
///   dhs = dO W_yhᵀ,  dW_yh = hsᵀ dO,  db_y = colsum(dO).
/// The log-sum-exp subtracts each row's maximum, so large logits do not overflow. The loss is accumulated in
/// double for either Scalar.
/// hs       [N, H]  in
/// W_yh     [H, K]  in
/// b_y      [K]     in
/// targets  [N]     in   class indices in 0 .. K-1, or ignore_index for a row that adds no loss and no gradient
/// ignore_index     in   a target value outside 0 .. K-1 (as PyTorch's); "mean" over no counted row is NaN
/// dhs      [N, H]  out
/// dW_yh    [H, K]  out
/// db_y     [K]     out
/// Returns the loss. Throws std::invalid_argument for a shape mismatch or a target outside 0 .. K-1 that is not
/// ignore_index.
template <class Scalar>
double softmax_cross_entropy(ConstMatrixRef<Scalar> hs, ConstMatrixRef<Scalar> W_yh, ConstVectorRef<Scalar> b_y,
                             const std::int64_t* targets, std::int64_t ignore_index, Reduction reduction,
                             MatrixRef<Scalar> dhs,
                             MatrixRef<Scalar> dW_yh, VectorRef<Scalar> db_y);

}  // namespace fastbptt::loss
