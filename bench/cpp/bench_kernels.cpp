// Google Benchmark suite of the core: forward + BPTT (loss = sum of the outputs) and forward alone of the RNN
// (tanh), the LSTM (with forget gate) and the GRU at the shapes of `python -m fastbptt bench`, and Eigen's
// 2048 x 2048 GEMM built with the same flags, the matrix-product rate the kernels are compared to.
#include <benchmark/benchmark.h>
#include <fastbptt/build_info.hpp>
#include <fastbptt/gru.hpp>
#include <fastbptt/lstm.hpp>
#include <fastbptt/rnn.hpp>
#include <fastbptt/threads.hpp>

#include <Eigen/Core>

#include <cmath>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#ifndef FASTBPTT_BENCH_MIN_TIME
#define FASTBPTT_BENCH_MIN_TIME "0.3"
#endif

namespace {

using fastbptt::Index;
using fastbptt::Shape;
template <class Scalar>
using Matrix = fastbptt::RowMatrix<Scalar>;
template <class Scalar>
using Vector = fastbptt::RowVector<Scalar>;

struct NamedShape {
  const char* name;
  Shape shape;  // T, B, D, H
};

constexpr NamedShape kShapes[] = {
    {"S", {50, 16, 32, 32}},    {"M", {100, 32, 128, 128}}, {"L", {100, 64, 256, 256}},
    {"XL", {50, 128, 512, 512}}, {"LONG", {1000, 8, 64, 64}},
};
constexpr int kThreads[] = {1, 2};
constexpr Index kGemmSize = 2048;

template <class Scalar>
const char* dtype_name();
template <>
const char* dtype_name<float>() {
  return "float";
}
template <>
const char* dtype_name<double>() {
  return "double";
}

// Weights uniform in +-1/sqrt(H) as PyTorch initialises them, inputs and states in +-1: the activations stay off
// saturation, so the timings are those of a training run and not of a degenerate one.
template <class Scalar>
Matrix<Scalar> uniform(Index rows, Index cols, double scale) {
  return Matrix<Scalar>::Random(rows, cols) * static_cast<Scalar>(scale);
}

template <class Scalar>
Vector<Scalar> uniform(Index size, double scale) {
  return Vector<Scalar>::Random(size) * static_cast<Scalar>(scale);
}

// What every cell shares: inputs, the upstream gradient of loss = sum of the outputs (ones) and the outputs of
// backward that do not depend on the cell. All of it is written here so that no page is first touched in the
// timed loop.
template <class Scalar>
struct Common {
  explicit Common(const Shape& s)
      : shape(s),
        k(1.0 / std::sqrt(static_cast<double>(s.H))),
        x(uniform<Scalar>(s.T * s.B, s.D, 1.0)),
        h0(uniform<Scalar>(s.B, s.H, 0.5)),
        hs(Matrix<Scalar>::Zero(s.T * s.B, s.H)),
        dhs(Matrix<Scalar>::Ones(s.T * s.B, s.H)),
        dx(Matrix<Scalar>::Zero(s.T * s.B, s.D)),
        dh0(Matrix<Scalar>::Zero(s.B, s.H)) {}

  Shape shape;
  double k;
  Matrix<Scalar> x, h0, hs, dhs, dx, dh0;
};

template <class Scalar>
struct Rnn : Common<Scalar> {
  static constexpr const char* name = "rnn";
  static constexpr Index gates = 1;

  explicit Rnn(const Shape& s)
      : Common<Scalar>(s),
        W_xh(uniform<Scalar>(s.D, s.H, this->k)),
        W_hh(uniform<Scalar>(s.H, s.H, this->k)),
        b_h(uniform<Scalar>(s.H, this->k)),
        dW_xh(Matrix<Scalar>::Zero(s.D, s.H)),
        dW_hh(Matrix<Scalar>::Zero(s.H, s.H)),
        db_h(Vector<Scalar>::Zero(s.H)) {}

  void forward() {
    fastbptt::rnn::forward<Scalar>(this->shape, fastbptt::Activation::tanh, inputs(), weights(), cache());
  }
  void backward() {
    fastbptt::rnn::Upstream<Scalar> upstream;
    upstream.dhs = this->dhs;
    fastbptt::rnn::Gradients<Scalar> gradients;
    gradients.dx = this->dx;
    gradients.dh0 = this->dh0;
    gradients.dW_xh = dW_xh;
    gradients.dW_hh = dW_hh;
    gradients.db_h = db_h;
    fastbptt::rnn::backward<Scalar>(this->shape, fastbptt::Activation::tanh, inputs(), weights(), cache(), upstream,
                                    gradients);
  }
  fastbptt::rnn::Inputs<Scalar> inputs() const {
    fastbptt::rnn::Inputs<Scalar> in;
    in.x = this->x;
    in.h0 = this->h0;
    return in;
  }
  fastbptt::rnn::Weights<Scalar> weights() const {
    fastbptt::rnn::Weights<Scalar> w;
    w.W_xh = W_xh;
    w.W_hh = W_hh;
    w.b_h = b_h;
    return w;
  }
  fastbptt::rnn::Cache<Scalar> cache() {
    fastbptt::rnn::Cache<Scalar> c;
    c.hs = this->hs;
    return c;
  }

  Matrix<Scalar> W_xh, W_hh;
  Vector<Scalar> b_h;
  Matrix<Scalar> dW_xh, dW_hh;
  Vector<Scalar> db_h;
};

template <class Scalar>
struct Lstm : Common<Scalar> {
  static constexpr const char* name = "lstm";
  static constexpr Index gates = fastbptt::lstm::gate_count(true);

  explicit Lstm(const Shape& s)
      : Common<Scalar>(s),
        W_x(uniform<Scalar>(s.D, gates * s.H, this->k)),
        W_h(uniform<Scalar>(s.H, gates * s.H, this->k)),
        b(uniform<Scalar>(gates * s.H, this->k)),
        c0(uniform<Scalar>(s.B, s.H, 0.5)),
        gate_values(Matrix<Scalar>::Zero(s.T * s.B, gates * s.H)),
        cs(Matrix<Scalar>::Zero(s.T * s.B, s.H)),
        dc_T(Matrix<Scalar>::Zero(s.B, s.H)),
        dc0(Matrix<Scalar>::Zero(s.B, s.H)),
        dW_x(Matrix<Scalar>::Zero(s.D, gates * s.H)),
        dW_h(Matrix<Scalar>::Zero(s.H, gates * s.H)),
        db(Vector<Scalar>::Zero(gates * s.H)) {}

  void forward() { fastbptt::lstm::forward<Scalar>(this->shape, true, inputs(), weights(), cache()); }
  void backward() {
    fastbptt::lstm::Upstream<Scalar> upstream;
    upstream.dhs = this->dhs;
    upstream.dc_T = dc_T;
    fastbptt::lstm::Gradients<Scalar> gradients;
    gradients.dx = this->dx;
    gradients.dh0 = this->dh0;
    gradients.dc0 = dc0;
    gradients.dW_x = dW_x;
    gradients.dW_h = dW_h;
    gradients.db = db;
    fastbptt::lstm::backward<Scalar>(this->shape, true, inputs(), weights(), cache(), upstream, gradients);
  }
  fastbptt::lstm::Inputs<Scalar> inputs() const {
    fastbptt::lstm::Inputs<Scalar> in;
    in.x = this->x;
    in.h0 = this->h0;
    in.c0 = c0;
    return in;
  }
  fastbptt::lstm::Weights<Scalar> weights() const {
    fastbptt::lstm::Weights<Scalar> w;
    w.W_x = W_x;
    w.W_h = W_h;
    w.b = b;
    return w;
  }
  fastbptt::lstm::Cache<Scalar> cache() {
    fastbptt::lstm::Cache<Scalar> c;
    c.gates = gate_values;
    c.hs = this->hs;
    c.cs = cs;
    return c;
  }

  Matrix<Scalar> W_x, W_h;
  Vector<Scalar> b;
  Matrix<Scalar> c0, gate_values, cs, dc_T, dc0, dW_x, dW_h;
  Vector<Scalar> db;
};

template <class Scalar>
struct Gru : Common<Scalar> {
  static constexpr const char* name = "gru";
  static constexpr Index gates = fastbptt::gru::gate_count;

  explicit Gru(const Shape& s)
      : Common<Scalar>(s),
        W_x(uniform<Scalar>(s.D, gates * s.H, this->k)),
        W_h(uniform<Scalar>(s.H, gates * s.H, this->k)),
        b(uniform<Scalar>(gates * s.H, this->k)),
        b_hn(uniform<Scalar>(s.H, this->k)),
        gate_values(Matrix<Scalar>::Zero(s.T * s.B, gates * s.H)),
        hn(Matrix<Scalar>::Zero(s.T * s.B, s.H)),
        dW_x(Matrix<Scalar>::Zero(s.D, gates * s.H)),
        dW_h(Matrix<Scalar>::Zero(s.H, gates * s.H)),
        db(Vector<Scalar>::Zero(gates * s.H)),
        db_hn(Vector<Scalar>::Zero(s.H)) {}

  void forward() { fastbptt::gru::forward<Scalar>(this->shape, inputs(), weights(), cache()); }
  void backward() {
    fastbptt::gru::Upstream<Scalar> upstream;
    upstream.dhs = this->dhs;
    fastbptt::gru::Gradients<Scalar> gradients;
    gradients.dx = this->dx;
    gradients.dh0 = this->dh0;
    gradients.dW_x = dW_x;
    gradients.dW_h = dW_h;
    gradients.db = db;
    gradients.db_hn = db_hn;
    fastbptt::gru::backward<Scalar>(this->shape, inputs(), weights(), cache(), upstream, gradients);
  }
  fastbptt::gru::Inputs<Scalar> inputs() const {
    fastbptt::gru::Inputs<Scalar> in;
    in.x = this->x;
    in.h0 = this->h0;
    return in;
  }
  fastbptt::gru::Weights<Scalar> weights() const {
    fastbptt::gru::Weights<Scalar> w;
    w.W_x = W_x;
    w.W_h = W_h;
    w.b = b;
    w.b_hn = b_hn;
    return w;
  }
  fastbptt::gru::Cache<Scalar> cache() {
    fastbptt::gru::Cache<Scalar> c;
    c.gates = gate_values;
    c.hn = hn;
    c.hs = this->hs;
    return c;
  }

  Matrix<Scalar> W_x, W_h;
  Vector<Scalar> b, b_hn;
  Matrix<Scalar> gate_values, hn, dW_x, dW_h;
  Vector<Scalar> db, db_hn;
};

// A build without OpenMP accepts one thread only: its 2-thread benchmarks say so instead of failing the run.
bool use_threads(benchmark::State& state, int threads) {
  try {
    fastbptt::set_num_threads(threads);
    return true;
  } catch (const std::exception& error) {
    state.SkipWithError(error.what());
    return false;
  }
}

// The same count as `python -m fastbptt bench`: forward does T steps of two products, [B, D] x [D, G*H] and
// [B, H] x [H, G*H]; backward does twice that (gradients to the weights and to the inputs).
double flop_count(const Shape& s, Index gates, bool with_backward) {
  return (with_backward ? 3.0 : 1.0) * static_cast<double>(s.T) * 2.0 * static_cast<double>(s.B) *
         static_cast<double>(s.D + s.H) * static_cast<double>(gates * s.H);
}

template <class Cell>
void run_cell(benchmark::State& state, Shape shape, int threads, bool with_backward) {
  if (!use_threads(state, threads)) return;
  Cell cell(shape);
  // One untimed call: OpenMP starts its threads and the allocator maps the scratch of backward before timing.
  cell.forward();
  if (with_backward) cell.backward();
  for (auto _ : state) {
    cell.forward();
    if (with_backward) cell.backward();
    benchmark::DoNotOptimize(cell.dx.data());
    benchmark::DoNotOptimize(cell.hs.data());
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP"] = benchmark::Counter(flop_count(shape, Cell::gates, with_backward) / 1e9,
                                               benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = fastbptt::get_num_threads();
}

template <class Scalar>
void run_gemm(benchmark::State& state, Index n, int threads) {
  if (!use_threads(state, threads)) return;
  // fastbptt::set_num_threads sets Eigen's own count, which this product reads too; set it here all the same so
  // that the baseline does not depend on how the core does it.
  Eigen::setNbThreads(threads);
  const Matrix<Scalar> a = Matrix<Scalar>::Random(n, n), b = Matrix<Scalar>::Random(n, n);
  Matrix<Scalar> c = Matrix<Scalar>::Zero(n, n);
  c.noalias() = a * b;
  for (auto _ : state) {
    c.noalias() = a * b;
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  const double flops = 2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n);
  state.counters["GFLOP"] = benchmark::Counter(flops / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = Eigen::nbThreads();
}

template <class Scalar>
void register_gemm() {
  for (const int threads : kThreads) {
    const std::string name = std::string("gemm/") + dtype_name<Scalar>() + "/" + std::to_string(kGemmSize) +
                             "/threads:" + std::to_string(threads);
    benchmark::RegisterBenchmark(name.c_str(), run_gemm<Scalar>, kGemmSize, threads)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
}

// Names "<cell>/<dtype>/<shape>/threads:<n>" for forward + backward and "<cell>_fwd/..." for forward alone, so
// that --benchmark_filter can pick a cell, a dtype, a shape or a thread count by a plain substring.
template <template <class> class Cell, class Scalar>
void register_cell(bool with_backward) {
  for (const NamedShape& shape : kShapes) {
    for (const int threads : kThreads) {
      const std::string name = std::string(Cell<Scalar>::name) + (with_backward ? "/" : "_fwd/") +
                               dtype_name<Scalar>() + "/" + shape.name + "/threads:" + std::to_string(threads);
      // Real time: the threads are OpenMP's inside the call, which the main thread's CPU time would not count.
      benchmark::RegisterBenchmark(name.c_str(), run_cell<Cell<Scalar>>, shape.shape, threads, with_backward)
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
    }
  }
}

template <template <class> class Cell>
void register_both_dtypes(bool with_backward) {
  register_cell<Cell, float>(with_backward);
  register_cell<Cell, double>(with_backward);
}

void register_all() {
  register_gemm<float>();
  register_gemm<double>();
  for (const bool with_backward : {true, false}) {
    register_both_dtypes<Rnn>(with_backward);
    register_both_dtypes<Lstm>(with_backward);
    register_both_dtypes<Gru>(with_backward);
  }
}

}  // namespace

int main(int argc, char** argv) {
  // Google Benchmark's default of 0.5 s per benchmark takes the whole suite past 3 minutes on 2 cores; the
  // command line still decides when it names a minimum time.
  std::string min_time = "--benchmark_min_time=" FASTBPTT_BENCH_MIN_TIME;
  std::vector<char*> args(argv, argv + argc);
  bool min_time_given = false;
  for (int i = 1; i < argc; ++i) min_time_given |= std::strncmp(argv[i], "--benchmark_min_time", 20) == 0;
  if (!min_time_given) args.insert(args.begin() + 1, min_time.data());
  int count = static_cast<int>(args.size());
  args.push_back(nullptr);
  benchmark::Initialize(&count, args.data());
  if (benchmark::ReportUnrecognizedArguments(count, args.data())) return 1;
  // The header of the report says what was measured: the core's build and the ISA of the GEMM baseline, which
  // must match the core's for the comparison to mean anything.
  for (const auto& [key, value] : fastbptt::build_info()) benchmark::AddCustomContext("fastbptt_" + key, value);
  benchmark::AddCustomContext("gemm_eigen_simd", Eigen::SimdInstructionSetsInUse());
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
