// Products with a weight matrix packed once per call and reused by every time step (private to the core).
//
// C [rows, N] (+)= A [rows, K] * W [K, N]. W is stored as column panels of one SIMD packet each (zero-padded at
// the right edge), so a step does not repack the weights the way a general product routine must on every call;
// for the small row counts of a recurrent step (the batch) that packing costs as much as the arithmetic.
// Every element is sum_k A(r, k) W(k, n) accumulated in k order with FMAs, whatever rows the call covers and
// however they are grouped: a step computes the same bits whether the sequence is run whole or in chunks.
// The columns may form equal groups (an LSTM's gate blocks), each padded to whole panels on its own, so that panel q
// of every group holds the same hidden units: a thread of the time loop's team then computes the columns of its own
// units in every gate and applies the gates to them, without waiting for the other threads within a step.
// W may also be two matrices stacked, [W_x; W_h], multiplied by rows [x_t, h_{t-1}] whose two parts lie apart: a
// step's whole pre-activation is then one product that writes it, rather than an input projection computed for all
// steps beforehand, which the step's product would find gone from cache by the time it adds to it.
#pragma once

#include <algorithm>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "fastbptt/threads.hpp"
#include "pointwise.hpp"

// Unrolls a loop over a register tile's rows or panels completely, before the optimiser looks at the accumulators:
// left as loops, GCC 12 at -O3 kept the accumulator array in memory and stored every accumulator at every k (the
// broadcast loads of A may alias it), which bound the tile by the stores rather than the FMAs.
#define FASTBPTT_TILE_LOOP _Pragma("GCC unroll 16")

namespace fastbptt::detail {

/// Rows of a matrix in memory: row r starts at data + r * stride.
template <class Element>
struct StridedRows {
  Element* data = nullptr;
  Index stride = 0;
};

/// The rows of an Eigen matrix, map or block.
template <class Matrix>
auto strided_rows(Matrix&& m) {
  return StridedRows<std::remove_pointer_t<decltype(m.data())>>{m.data(), m.outerStride()};
}

/// The left operand of a product with PackedWeights: `rows` rows of K values. Row r of the product is row
/// row_index[r] of `first` and of the result (row r itself when row_index is null): a subset of rows in any order,
/// multiplied where they lie. For stacked weights [W_top; W_bottom] a row's first K1 values come from `first` and
/// its other K2 values from `second` (picked by row_index alike).
template <class Scalar>
struct LeftOperand {
  StridedRows<const Scalar> first;
  StridedRows<const Scalar> second;
  Index rows = 0;
  const Index* row_index = nullptr;
};

/// Whether a matrix is packed as given or transposed.
enum class Orientation { as_given, transposed };

/// Whether a product writes its result (C = A W) or adds to what is there (C += A W).
enum class Store { overwrite, add };

/// Panels begin .. end-1 of every column group: the hidden units begin * lanes .. end * lanes - 1 of every gate.
struct PanelRange {
  Index begin = 0, end = 0;
};

template <class Scalar>
class PackedWeights {
 public:
  using P = Packet<Scalar>;
  static constexpr Index lanes = packet_size<Scalar>;

  /// Packs W [K, N], or Wᵀ for Orientation::transposed (then W is [N, K]); `groups` must divide N.
  PackedWeights(const Eigen::Ref<const RowMatrix<Scalar>>& W, Orientation orientation, Index groups = 1)
      : PackedWeights(orientation == Orientation::transposed ? W.cols() : W.rows(),
                      orientation == Orientation::transposed ? W.rows() : W.cols(), groups) {
    if (orientation == Orientation::transposed) {
      pack_transposed(W);
    } else {
      pack_rows(W, 0);
    }
    split_ = K_;
  }

  /// Packs [W_top; W_bottom] ([K1 + K2, N]); rows then come in two parts, K1 values and K2 values (multiply_units).
  PackedWeights(const Eigen::Ref<const RowMatrix<Scalar>>& W_top, const Eigen::Ref<const RowMatrix<Scalar>>& W_bottom,
                Index groups)
      : PackedWeights(W_top.rows() + W_bottom.rows(), W_top.cols(), groups) {
    split_ = W_top.rows();
    pack_rows(W_top, 0);
    pack_rows(W_bottom, split_);
  }

  /// The scalars that packing a [K, N] matrix in `groups` column groups allocates: every group padded to whole
  /// panels of one packet, K rows each, and one packet more. Throws std::invalid_argument for negative sizes or
  /// groups that do not divide N, std::overflow_error when the count exceeds Index.
  static Index scalars(Index K, Index N, Index groups) {
    if (K < 0 || N < 0 || groups < 1 || N % groups != 0) {
      throw std::invalid_argument("packed weights: expected sizes >= 0 and groups >= 1 dividing the columns, got " +
                                  std::to_string(K) + " x " + std::to_string(N) + " in " + std::to_string(groups));
    }
    const Index group_panels = N / groups / lanes + (N / groups % lanes != 0);
    Index count = 0;
    if (__builtin_mul_overflow(groups, group_panels, &count) || __builtin_mul_overflow(count, K, &count) ||
        __builtin_mul_overflow(count, lanes, &count) || __builtin_add_overflow(count, lanes, &count)) {
      throw std::overflow_error("packed weights: " + std::to_string(K) + " x " + std::to_string(N) +
                                " scalars are more than an Index counts");
    }
    return count;
  }

  Index depth() const { return K_; }
  Index cols() const { return N_; }
  /// The rows of W_top for stacked weights [W_top; W_bottom] (their rows' first part), depth() otherwise.
  Index split() const { return split_; }
  /// Columns per group (an LSTM's H) and panels per group: the hidden units of a group come in that many packets.
  Index group_width() const { return group_width_; }
  Index group_panels() const { return group_panels_; }

  /// C = A W or C += A W (see Store), for the rows of `a`; C's rows lie as `a` says (row_index included).
  /// Runs on call_threads() threads when the product is large enough to repay starting them; the threads split C
  /// into disjoint blocks, so the result does not depend on the thread count.
  void multiply(const LeftOperand<Scalar>& a, StridedRows<Scalar> C, Store store) const {
    // tasks of a row block times one tile of panels, the tiles as equal in width as they can be (four panels as
    // 2 + 2: a last tile of one panel had four chains of FMAs)
    const Index panel_tiles = (panels_ + tile_panels - 1) / tile_panels;
    const Index tasks = (a.rows + row_block - 1) / row_block * panel_tiles;
    const Rows layout = rows_of(a, C);
    const auto task = [&](Index i) {
      const Index r0 = i / panel_tiles * row_block, r1 = std::min(a.rows, r0 + row_block);
      const Index tile = i % panel_tiles, narrow = panels_ / panel_tiles, wide = panels_ % panel_tiles;
      const Index p = tile * narrow + std::min(tile, wide);
      sweep_panels(layout, r0, r1, p, p + narrow + (tile < wide), store);
    };
#if defined(_OPENMP)
    const int threads = call_threads();
    if (threads > 1 && tasks > 1 && a.rows * K_ * N_ >= (Index(1) << 18)) {
#pragma omp parallel for schedule(static) num_threads(threads)
      for (Index i = 0; i < tasks; ++i) task(i);
      return;
    }
#endif
    for (Index i = 0; i < tasks; ++i) task(i);
  }

  /// As multiply, for the columns of `panels` in every group (the hidden units of a team member in every gate), on
  /// the calling thread.
  void multiply_units(const LeftOperand<Scalar>& a, PanelRange panels, StridedRows<Scalar> C, Store store) const {
    const Rows layout = rows_of(a, C);
    // Every panel of every group (a team of one): one sweep over all of them, whose tiles may span the groups'
    // edges. Swept group by group, a gate block of four panels went as two tiles of two, too few chains.
    const bool every_panel = panels.begin == 0 && panels.end == group_panels_;
    for (Index r0 = 0; r0 < a.rows; r0 += row_block) {
      const Index r1 = std::min(a.rows, r0 + row_block);
      if (every_panel) {
        sweep_panels(layout, r0, r1, 0, panels_, store);
        continue;
      }
      for (Index g = 0; g * group_panels_ < panels_; ++g) {
        sweep_panels(layout, r0, r1, g * group_panels_ + panels.begin, g * group_panels_ + panels.end, store);
      }
    }
  }

 private:
  static constexpr Index row_block = 64;  // A's rows of one block stay in cache while every panel passes over them
  // The register tile: up to tile_rows x tile_panels accumulators. A core with two FMA units of four cycles'
  // latency needs eight independent chains in flight to stay busy, and more to ride out a late load; the tile also
  // holds a packet of each panel and a broadcast of A, 16 registers in all, which AVX2 and SSE2 have. The tile does
  // not change the bits: each element is its own chain, in k order.
  static constexpr int tile_rows = 4, tile_panels = 3;

  PackedWeights(Index K, Index N, Index groups)
      : K_(K),
        N_(N),
        group_width_(N_ / groups),
        group_panels_((group_width_ + lanes - 1) / lanes),
        panels_(groups * group_panels_),
        data_(static_cast<std::size_t>(scalars(K, N, groups)), Scalar(0)) {}

  /// Rows k0 .. k0 + W.rows() - 1 of the packed matrix from W, panel by panel (each panel's part of a row of W
  /// is contiguous, and so is the panel); the padding lanes stay zero.
  void pack_rows(const Eigen::Ref<const RowMatrix<Scalar>>& W, Index k0) {
    for (Index p = 0; p < panels_; ++p) {
      const Index n0 = column(p), n = width(p);
      Scalar* out = panel(p) + k0 * lanes;
      for (Index k = 0; k < W.rows(); ++k) std::copy_n(W.data() + k * W.outerStride() + n0, n, out + k * lanes);
    }
  }

  /// The packed matrix from Wᵀ (W [N, K]): lane j of panel p is row column(p) + j of W, read along the row.
  void pack_transposed(const Eigen::Ref<const RowMatrix<Scalar>>& W) {
    for (Index p = 0; p < panels_; ++p) {
      Scalar* out = panel(p);
      for (Index lane = 0; lane < width(p); ++lane) {
        const Scalar* row = W.data() + (column(p) + lane) * W.outerStride();
        for (Index k = 0; k < K_; ++k) out[k * lanes + lane] = row[k];
      }
    }
  }

  const Scalar* panel(Index p) const { return data_.data() + p * K_ * lanes; }
  Scalar* panel(Index p) { return data_.data() + p * K_ * lanes; }
  /// The first column of C that panel p covers, and how many it covers (fewer than lanes at a group's end).
  Index column(Index p) const { return p / group_panels_ * group_width_ + p % group_panels_ * lanes; }
  Index width(Index p) const { return std::min(lanes, group_width_ - p % group_panels_ * lanes); }

  /// Where row r of a product's A and C lie.
  struct Rows {
    const Scalar* A;
    Index lda;
    Scalar* C;
    Index ldc;
    const Index* index;
    const Scalar* A2;  // the rows' second part, for stacked weights
    Index lda2;
    Index at(Index r) const { return index ? index[r] : r; }
    /// Where rows r .. r+n-1 start in A (both parts) and in C.
    void starts(Index r, Index n, const Scalar** a, const Scalar** a2, Scalar** c) const {
      for (Index i = 0; i < n; ++i) {
        a[i] = A + at(r + i) * lda;
        a2[i] = A2 + at(r + i) * lda2;
        c[i] = C + at(r + i) * ldc;
      }
    }
  };
  static Rows rows_of(const LeftOperand<Scalar>& a, StridedRows<Scalar> C) {
    return Rows{a.first.data, a.first.stride, C.data, C.stride, a.row_index, a.second.data, a.second.stride};
  }

  /// Rows r0 .. r1-1 times panels p0 .. p1-1, in tiles of as equal a width as tile_panels allows (4 panels go as
  /// 2 + 2, not 3 + 1: a narrow tile has too few chains to keep the FMA units busy). Fewer than tile_rows rows in
  /// all (a batch of one to three, the last rows of a call) go in tiles as wide as the register tile allows for
  /// them, so that one row still has twelve chains in flight, not three. Never inlined: inlined into a time loop
  /// (link-time optimisation's choice), its tiles ran slower.
  EIGEN_DONT_INLINE void sweep_panels(const Rows& rows, Index r0, Index r1, Index p0, Index p1, Store store) const {
    const bool accumulate = store == Store::add;
    if (r1 <= r0) return;
    if (r1 - r0 < tile_rows) {
      with_count<tile_rows - 1>(r1 - r0, [&](auto count) {
        sweep_few_rows<decltype(count)::value>(rows, r0, p0, p1, accumulate);
      });
      return;
    }
    for_tiles<tile_panels>(p0, p1, [&](Index p, auto panels) {
      sweep_rows<decltype(panels)::value>(rows, r0, r1, p, accumulate);
    });
  }

  /// f(p, std::integral_constant<int, width>{}) for tiles of panels p0 .. p1-1, each as wide as MaxPanels allows
  /// and as equal in width as they can be.
  template <int MaxPanels, class F>
  static EIGEN_ALWAYS_INLINE void for_tiles(Index p0, Index p1, F&& f) {
    const Index tiles = (p1 - p0 + MaxPanels - 1) / MaxPanels;
    for (Index i = 0, p = p0; i < tiles; ++i) {
      const Index width = (p1 - p0) / tiles + (i < (p1 - p0) % tiles);
      with_count<MaxPanels>(width, [&](auto panels) { f(p, panels); });
      p += width;
    }
  }

  /// The Count rows from r0 (fewer than tile_rows) times panels p0 .. p1-1, in tiles of Count rows by up to
  /// tile_rows * tile_panels / Count panels: the register tile's accumulators, spent on fewer rows.
  template <int Count>
  void sweep_few_rows(const Rows& rows, Index r0, Index p0, Index p1, bool accumulate) const {
    const Scalar* a[Count];
    const Scalar* a2[Count];
    Scalar* c[Count];
    rows.starts(r0, Count, a, a2, c);
    for_tiles<tile_rows * tile_panels / Count>(p0, p1, [&](Index p, auto panels) {
      kernel<Count, decltype(panels)::value>(a, a2, c, p, accumulate);
    });
  }

  template <int Panels>
  void sweep_rows(const Rows& rows, Index r0, Index r1, Index p, bool accumulate) const {
    for (Index r = r0; r < r1; r += tile_rows) {
      const Scalar* a[tile_rows];
      const Scalar* a2[tile_rows];
      Scalar* c[tile_rows];
      const Index n = std::min<Index>(tile_rows, r1 - r);
      rows.starts(r, n, a, a2, c);
      with_count<tile_rows>(n, [&](auto count) {
        kernel<decltype(count)::value, Panels>(a, a2, c, p, accumulate);
      });
    }
  }

  /// f(std::integral_constant<int, n>{}) for 1 <= n <= Max: a count known at run time as a template argument.
  template <int Max, class F>
  static EIGEN_ALWAYS_INLINE void with_count(Index n, F&& f) {
    if constexpr (Max > 1) {
      if (n < Max) return with_count<Max - 1>(n, f);
    }
    f(std::integral_constant<int, Max>{});
  }

  /// Rows x (Panels * lanes) block of C from Rows rows of A (the first split_ values of a row from a_rows, the rest
  /// from a2_rows) and panels p .. p+Panels-1: one chain of FMAs per element, in k order.
  template <int Rows, int Panels>
  void kernel(const Scalar* const* a_rows, const Scalar* const* a2_rows, Scalar* const* c_rows, Index p,
              bool accumulate) const {
    P acc[Rows][Panels];
    FASTBPTT_TILE_LOOP
    for (int i = 0; i < Rows; ++i) {
      FASTBPTT_TILE_LOOP
      for (int j = 0; j < Panels; ++j) acc[i][j] = ei::pset1<P>(Scalar(0));
    }
    const Scalar* w[Panels];
    FASTBPTT_TILE_LOOP
    for (int j = 0; j < Panels; ++j) w[j] = panel(p + j);
    add_products<Rows, Panels>(acc, w, a_rows, 0, split_);
    if (split_ < K_) add_products<Rows, Panels>(acc, w, a2_rows, split_, K_);
    FASTBPTT_TILE_LOOP
    for (int j = 0; j < Panels; ++j) {
      const Lanes<Scalar> out{column(p + j), width(p + j)};
      FASTBPTT_TILE_LOOP
      for (int i = 0; i < Rows; ++i) {
        Scalar* c = c_rows[i];
        out.store(c, accumulate ? ei::padd(out.load(c), acc[i][j]) : acc[i][j]);
      }
    }
  }

  /// acc += sum over k = k0 .. k1-1 of A(row, k) W(k, panel columns), where a_rows[i][0] is A(row i, k0).
  template <int Rows, int Panels>
  EIGEN_ALWAYS_INLINE void add_products(P (&acc)[Rows][Panels], const Scalar* const* w, const Scalar* const* a_rows,
                                        Index k0, Index k1) const {
    const Scalar* a[Rows];
    FASTBPTT_TILE_LOOP
    for (int i = 0; i < Rows; ++i) a[i] = a_rows[i];
    const Scalar* w0[Panels];
    FASTBPTT_TILE_LOOP
    for (int j = 0; j < Panels; ++j) w0[j] = w[j] + k0 * lanes;
    for (Index k = 0; k < k1 - k0; ++k) {
      P wk[Panels];
      FASTBPTT_TILE_LOOP
      for (int j = 0; j < Panels; ++j) wk[j] = ei::pload<P>(w0[j] + k * lanes);
      FASTBPTT_TILE_LOOP
      for (int i = 0; i < Rows; ++i) {
        const P a_ik = ei::pset1<P>(a[i][k]);
        FASTBPTT_TILE_LOOP
        for (int j = 0; j < Panels; ++j) acc[i][j] = ei::pmadd(a_ik, wk[j], acc[i][j]);
      }
    }
  }

  Index K_, N_, group_width_, group_panels_, panels_;
  Index split_;  // a row's first split_ values come from A, the others (stacked weights) from A2
  std::vector<Scalar, Eigen::aligned_allocator<Scalar>> data_;
};

}  // namespace fastbptt::detail
