// Trains a small LSTM language model for a few steps through fastbptt's C++ API: forward, softmax /
// cross-entropy loss, backpropagation through time, plain gradient descent. Exits 0 when the loss fell.
#include <fastbptt/build_info.hpp>
#include <fastbptt/loss.hpp>
#include <fastbptt/lstm.hpp>

#include <cstdint>
#include <iostream>
#include <random>
#include <vector>

using Matrix = fastbptt::RowMatrix<float>;
using Vector = fastbptt::RowVector<float>;

int main() {
  const fastbptt::Shape shape{/*T=*/20, /*B=*/4, /*D=*/8, /*H=*/16};
  const Eigen::Index K = shape.D;  // predict the next one-hot symbol
  const Eigen::Index N = shape.T * shape.B, GH = fastbptt::lstm::gate_count(true) * shape.H;

  // A repeating sequence 0, 1, ..., D-1 in every batch row, shifted per row: the next symbol is learnable.
  Matrix x = Matrix::Zero(N, shape.D);
  std::vector<std::int64_t> targets(N);
  for (Eigen::Index t = 0; t < shape.T; ++t) {
    for (Eigen::Index b = 0; b < shape.B; ++b) {
      const Eigen::Index symbol = (t + b) % shape.D;
      x(t * shape.B + b, symbol) = 1.0f;
      targets[t * shape.B + b] = (symbol + 1) % K;
    }
  }

  std::mt19937 rng(7);
  std::uniform_real_distribution<float> uniform(-0.25f, 0.25f);
  const auto random = [&](Eigen::Index rows, Eigen::Index cols) {
    return Matrix(Matrix::NullaryExpr(rows, cols, [&] { return uniform(rng); }));
  };
  Matrix W_x = random(shape.D, GH), W_h = random(shape.H, GH), W_yh = random(shape.H, K);
  Vector b = Vector::Zero(GH), b_y = Vector::Zero(K);
  const Matrix h0 = Matrix::Zero(shape.B, shape.H), c0 = Matrix::Zero(shape.B, shape.H);

  // Buffers allocated once and reused by every step of training.
  Matrix gates(N, GH), hs(N, shape.H), cs(N, shape.H), dhs(N, shape.H), dW_yh(shape.H, K);
  Matrix dx(N, shape.D), dh0(shape.B, shape.H), dc0(shape.B, shape.H), dW_x(shape.D, GH), dW_h(shape.H, GH);
  Vector db(GH), db_y(K);
  const Matrix dc_T = Matrix::Zero(shape.B, shape.H);

  // The calls' arguments by role, each array named once.
  fastbptt::lstm::Inputs<float> inputs;
  inputs.x = x;
  inputs.h0 = h0;
  inputs.c0 = c0;
  fastbptt::lstm::Weights<float> weights;
  weights.W_x = W_x;
  weights.W_h = W_h;
  weights.b = b;
  fastbptt::lstm::Cache<float> cache;
  cache.gates = gates;
  cache.hs = hs;
  cache.cs = cs;
  fastbptt::lstm::Upstream<float> upstream;
  upstream.dhs = dhs;
  upstream.dc_T = dc_T;
  fastbptt::lstm::Gradients<float> gradients;
  gradients.dx = dx;
  gradients.dh0 = dh0;
  gradients.dc0 = dc0;
  gradients.dW_x = dW_x;
  gradients.dW_h = dW_h;
  gradients.db = db;

  std::cout << "fastbptt " << fastbptt::build_info().at("version") << ": LSTM T=" << shape.T << " B=" << shape.B
            << " D=" << shape.D << " H=" << shape.H << "\n";
  const float lr = 2.0f;
  double first = 0.0, last = 0.0;
  for (int step = 0; step < 200; ++step) {
    fastbptt::lstm::forward<float>(shape, true, inputs, weights, cache);
    last = fastbptt::loss::softmax_cross_entropy<float>(hs, W_yh, b_y, targets.data(), -100,
                                                        fastbptt::loss::Reduction::mean, dhs, dW_yh, db_y);
    fastbptt::lstm::backward<float>(shape, true, inputs, weights, cache, upstream, gradients);
    W_x -= lr * dW_x;
    W_h -= lr * dW_h;
    b -= lr * db;
    W_yh -= lr * dW_yh;
    b_y -= lr * db_y;
    if (step == 0) first = last;
    if (step % 40 == 0) std::cout << "step " << step << "  loss " << last << "\n";
  }
  std::cout << "loss " << first << " -> " << last << "\n";
  return last < 0.5 * first ? 0 : 1;
}
