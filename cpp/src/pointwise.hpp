// Element-wise kernels of the time loop, written on Eigen's SIMD packets (private to the core).
//
// Every element goes through the same packet code, the last partial packet of a row included (through a padded
// copy). Eigen's own expressions would peel a few elements at the start and the end of each row, where the
// alignment of the row decides, and compute those with scalar functions whose rounding differs from the packet
// ones: results would then change with where NumPy placed an array and with the chunking of a sequence.
// IEEE semantics hold: NaN propagates, tanh(+-inf) = +-1, sigmoid(+inf) = 1, sigmoid(-inf) = 0.
#pragma once

#include <Eigen/Core>

#include <algorithm>

#include "fastbptt/types.hpp"

namespace fastbptt::detail {

namespace ei = Eigen::internal;

template <class Scalar>
using Packet = typename ei::packet_traits<Scalar>::type;

template <class Scalar>
constexpr Index packet_size = ei::unpacket_traits<Packet<Scalar>>::size;

/// The packet at element offset `j` of a row, `count` lanes of which are real (count < packet_size only at the
/// end of a row). Loads fill the unused lanes with zeros, a harmless input for every function below.
template <class Scalar>
struct Lanes {
  static constexpr Index P = packet_size<Scalar>;
  Index j;
  Index count;

  Packet<Scalar> load(const Scalar* row) const {
    if (count == P) return ei::ploadu<Packet<Scalar>>(row + j);
    alignas(64) Scalar buffer[P] = {};
    std::copy_n(row + j, count, buffer);
    return ei::pload<Packet<Scalar>>(buffer);
  }

  void store(Scalar* row, const Packet<Scalar>& value) const {
    if (count == P) {
      ei::pstoreu(row + j, value);
      return;
    }
    alignas(64) Scalar buffer[P];
    ei::pstore(buffer, value);
    std::copy_n(buffer, count, row + j);
  }
};

/// Calls body(Lanes) for each packet of elements begin .. end-1 of a row (begin a multiple of the packet size).
template <class Scalar, class Body>
void for_each_packet(Index begin, Index end, Body&& body) {
  constexpr Index P = packet_size<Scalar>;
  for (Index j = begin; j < end; j += P) body(Lanes<Scalar>{j, std::min(P, end - j)});
}

/// Calls body(Lanes) for each packet of a row of n elements.
template <class Scalar, class Body>
void for_each_packet(Index n, Body&& body) {
  for_each_packet<Scalar>(0, n, body);
}

template <class Scalar>
Packet<Scalar> constant(Scalar value) {
  return ei::pset1<Packet<Scalar>>(value);
}

/// 1 / (1 + exp(-z)). Eigen's exp returns +inf for +inf, so sigmoid(-inf) is exactly 0.
template <class Scalar>
Packet<Scalar> sigmoid(const Packet<Scalar>& z) {
  const auto one = constant<Scalar>(1);
  return ei::pdiv(one, ei::padd(one, ei::pexp(ei::pnegate(z))));
}

/// tanh(z). float: Eigen's rational approximation (a few ulp). double: Eigen has no packet tanh, so
/// tanh|z| = -expm1(-2|z|) / (2 + expm1(-2|z|)), which keeps full relative accuracy near 0, and the sign of z.
template <class Scalar>
Packet<Scalar> tanh(const Packet<Scalar>& z) {
  if constexpr (ei::packet_traits<Scalar>::HasTanh) {
    return ei::ptanh(z);
  } else {
    const auto e = ei::generic_expm1(ei::pmul(constant<Scalar>(-2), ei::pabs(z)));
    const auto magnitude = ei::pdiv(ei::pnegate(e), ei::padd(constant<Scalar>(2), e));
    return ei::pxor(magnitude, ei::pand(z, constant<Scalar>(Scalar(-0.0))));
  }
}

/// phi of the plain RNN as packet functors; `gradient(dh, h)` is dL/dz = dh * phi'(z), with phi'(z) written
/// through h = phi(z).
struct TanhActivation {
  template <class Scalar>
  static Packet<Scalar> value(const Packet<Scalar>& z) {
    return tanh<Scalar>(z);
  }
  template <class Scalar>
  static Packet<Scalar> gradient(const Packet<Scalar>& dh, const Packet<Scalar>& h) {
    return ei::pmul(dh, ei::psub(constant<Scalar>(1), ei::pmul(h, h)));
  }
};

struct SigmoidActivation {
  template <class Scalar>
  static Packet<Scalar> value(const Packet<Scalar>& z) {
    return sigmoid<Scalar>(z);
  }
  template <class Scalar>
  static Packet<Scalar> gradient(const Packet<Scalar>& dh, const Packet<Scalar>& h) {
    return ei::pmul(dh, ei::pmul(h, ei::psub(constant<Scalar>(1), h)));
  }
};

struct ReluActivation {
  // z < 0 ? 0 : z, so that a NaN pre-activation stays NaN.
  template <class Scalar>
  static Packet<Scalar> value(const Packet<Scalar>& z) {
    const auto zero = constant<Scalar>(0);
    return ei::pselect(ei::pcmp_lt(z, zero), zero, z);
  }
  // dh * [h > 0] (0 also at z = 0, as PyTorch): multiplied by the 0/1 mask, not selected, so that a NaN or Inf in
  // dh gives NaN at an inactive unit as IEEE arithmetic and the reference do (DESIGN.md section 5).
  template <class Scalar>
  static Packet<Scalar> gradient(const Packet<Scalar>& dh, const Packet<Scalar>& h) {
    return ei::pmul(dh, ei::pand(ei::pcmp_lt(constant<Scalar>(0), h), constant<Scalar>(1)));
  }
};

/// Calls f(ActivationFunctor{}) for the runtime choice, so that the loops inside f are compiled once per phi.
template <class F>
void with_activation(Activation activation, F&& f) {
  switch (activation) {
    case Activation::tanh: f(TanhActivation{}); return;
    case Activation::relu: f(ReluActivation{}); return;
    case Activation::sigmoid: f(SigmoidActivation{}); return;
  }
}

}  // namespace fastbptt::detail
