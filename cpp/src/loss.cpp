// Softmax / cross-entropy output layer (see loss.hpp); explicit instantiations for float and double.
#include "fastbptt/loss.hpp"

#include <sstream>
#include <string>

namespace fastbptt::loss {

Reduction parse_reduction(const std::string& name) {
  if (name == "sum") return Reduction::sum;
  if (name == "mean") return Reduction::mean;
  throw std::invalid_argument("reduction: expected 'sum' or 'mean', got '" + name + "'");
}

template <class Scalar>
double softmax_cross_entropy(ConstMatrixRef<Scalar> hs, ConstMatrixRef<Scalar> W_yh, ConstVectorRef<Scalar> b_y,
                             const std::int64_t* targets, std::int64_t ignore_index, Reduction reduction,
                             MatrixRef<Scalar> dhs, MatrixRef<Scalar> dW_yh, VectorRef<Scalar> db_y) {
  const Index N = hs.rows();
  const Index H = hs.cols();
  const Index K = W_yh.cols();
  if (N < 1) throw std::invalid_argument("hs: needs at least one row (T*B >= 1)");
  if (K < 1) throw std::invalid_argument("W_yh: needs at least one output class (K >= 1)");
  detail::check_shape("W_yh", W_yh, H, K);
  detail::check_shape("b_y", b_y, 1, K);
  detail::check_shape("dhs", dhs, N, H);
  detail::check_shape("dW_yh", dW_yh, H, K);
  detail::check_shape("db_y", db_y, 1, K);
  if (ignore_index >= 0 && ignore_index < K) {
    throw std::invalid_argument("ignore_index: must lie outside the class indices 0 .. " + std::to_string(K - 1) +
                                ", got " + std::to_string(ignore_index));
  }
  Index counted = 0;
  for (Index n = 0; n < N; ++n) {
    if (targets[n] == ignore_index) continue;
    ++counted;
    if (targets[n] < 0 || targets[n] >= K) {
      std::ostringstream message;
      message << "targets: class indices must lie in 0 .. " << K - 1 << ", got " << targets[n] << " at flat index "
              << n;
      throw std::invalid_argument(message.str());
    }
  }

  // dO starts as the logits and becomes softmax(O) - onehot(y) row by row.
  RowMatrix<Scalar> dO(N, K);
  dO.noalias() = hs * W_yh;
  dO.rowwise() += b_y;
  // "mean" over no counted row: the loss is 0/0 = NaN (as PyTorch) and every gradient is zero.
  const Scalar scale = reduction == Reduction::sum ? Scalar(1)
                       : counted > 0               ? Scalar(1) / static_cast<Scalar>(counted)
                                                   : Scalar(0);
  double loss = 0.0;
  for (Index n = 0; n < N; ++n) {
    auto row = dO.row(n).array();
    if (targets[n] == ignore_index) {
      row.setZero();
      continue;
    }
    const Scalar row_max = row.maxCoeff();
    const Scalar target_shifted_logit = row(targets[n]) - row_max;
    row = (row - row_max).exp();
    const Scalar sum = row.sum();
    loss += std::log(static_cast<double>(sum)) - static_cast<double>(target_shifted_logit);
    row *= scale / sum;
    row(targets[n]) -= scale;
  }
  dW_yh.noalias() = hs.transpose() * dO;
  detail::column_sums<Scalar>(dO, db_y);
  dhs.noalias() = dO * W_yh.transpose();
  return reduction == Reduction::mean ? loss / static_cast<double>(counted) : loss;
}

template double softmax_cross_entropy<float>(ConstMatrixRef<float>, ConstMatrixRef<float>, ConstVectorRef<float>,
                                             const std::int64_t*, std::int64_t, Reduction, MatrixRef<float>,
                                             MatrixRef<float>, VectorRef<float>);
template double softmax_cross_entropy<double>(ConstMatrixRef<double>, ConstMatrixRef<double>,
                                              ConstVectorRef<double>, const std::int64_t*, std::int64_t, Reduction,
                                              MatrixRef<double>, MatrixRef<double>, VectorRef<double>);

}  // namespace fastbptt::loss
