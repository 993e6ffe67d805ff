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
#include <type_traits>

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

/// tanh(z) in double, within a few ulp: Eigen has no packet tanh for double, and expm1 through its generic packet
/// code (an exp and a log) cost four times an exp here. For |z| < 0.4, the Taylor series of tanh up to z^29: the
/// terms fall by (0.4 / (pi/2))^2 = 0.065 each, so the first omitted one is below 2e-17 of the result; the
/// coefficients are 2^2n (2^2n - 1) B_2n / (2n)! of the Bernoulli numbers B_2n, rounded to double. Beyond,
/// 1 - 2 / (exp(2|z|) + 1): there the subtracted term is at most 1.7 times the result, so the subtraction costs
/// under two bits, and a huge |z| gives exactly 1. Measured against glibc's tanh at 2.6e7 points from 1e-300 to
/// 800: at most 4 ulp (near |z| = 0.5). NaN stays NaN; the sign of z (and of a zero) is kept.
inline Packet<double> tanh_double(const Packet<double>& z) {
  using P = Packet<double>;
  static constexpr double taylor[] = {
      -0x1.5555555555555p-2,  0x1.1111111111111p-3,  -0x1.ba1ba1ba1ba1cp-5, 0x1.664f4882c10fap-6,
      -0x1.226e355e6c23dp-7,  0x1.d6d3d0e157de0p-9,  -0x1.7da36452b75e3p-10, 0x1.3558248036744p-11,
      -0x1.f57d7734d1664p-13, 0x1.967e18afcafadp-14, -0x1.497d8eea25259p-15, 0x1.0b132d39a6050p-16,
      -0x1.b0f72d3ee24e9p-18, 0x1.5ef2da474e5b7p-19};  // z^3 .. z^29
  constexpr int terms = sizeof(taylor) / sizeof(taylor[0]);
  const P a = ei::pabs(z);
  const P z2 = ei::pmul(z, z);
  P series = ei::pset1<P>(taylor[terms - 1]);
  for (int n = terms - 2; n >= 0; --n) series = ei::pmadd(series, z2, ei::pset1<P>(taylor[n]));
  const P near_zero = ei::padd(a, ei::pmul(a, ei::pmul(z2, series)));
  const P one = ei::pset1<P>(1.0);
  const P away = ei::psub(one, ei::pdiv(ei::pset1<P>(2.0), ei::padd(ei::pexp(ei::padd(a, a)), one)));
  const P magnitude = ei::pselect(ei::pcmp_lt(a, ei::pset1<P>(0.4)), near_zero, away);
  return ei::pxor(magnitude, ei::pand(z, ei::pset1<P>(-0.0)));
}

/// tanh(z). float: Eigen's rational approximation (a few ulp); double: tanh_double.
template <class Scalar>
Packet<Scalar> tanh(const Packet<Scalar>& z) {
  if constexpr (ei::packet_traits<Scalar>::HasTanh) {
    return ei::ptanh(z);
  } else {
    static_assert(std::is_same_v<Scalar, double>, "a packet tanh for this type");
    return tanh_double(z);
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
  // dh gives NaN at an inactive unit as IEEE arithmetic and the reference do.
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
