// The elementwise math shared by optimlab's fused CPU kernels.
//
// Everything here works on one SIMD vector (at::vec::Vectorized<T>) of the
// "math type" T: float for fp32/bf16/fp16 tensors, double for fp64 ones. The
// kernels in csrc/<algorithm>.cpp are written with these pieces only, so each
// formula (weight decay, torch's lerp, an exponential moving average of
// squares, addcdiv, the sign rule of Rprop, ...) exists once.
//
// Conventions, chosen to round as torch's for-loop ops do (the build passes
// -ffp-contract=off, so every fused multiply-add is one written here, where torch's
// own CPU kernel has one, and nowhere else):
//   * a host scalar `s` enters as `Vec(static_cast<T>(s))`: torch casts Python
//     scalars to the op math type of the tensor the same way;
//   * add_(b, alpha=s) is fmadd(b, s, a) (ATen's ufunc add); addcmul_(b, c, value=s)
//     is fmadd(s * b, c, a); addcdiv_(b, c, value=s) is a + (s * b) / c; lerp is
//     ATen's two-sided fmadd formula; plain mul_/div_/sqrt round once each;
//   * maximum/minimum propagate NaN like torch.maximum/torch.clamp.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>
#include <type_traits>
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

namespace optimlab {
namespace math {

template <class T>
using Vec = at::vec::Vectorized<T>;

// ---- loads and stores of a (possibly partial) vector --------------------------------
template <class T>
C10_ALWAYS_INLINE Vec<T> ld(const T* p, int64_t count) {
  return count == Vec<T>::size() ? Vec<T>::loadu(p) : Vec<T>::loadu(p, count);
}

template <class T>
C10_ALWAYS_INLINE void st(const Vec<T>& v, T* p, int64_t count) {
  if (count == Vec<T>::size()) {
    v.store(p);
  } else {
    v.store(p, static_cast<int>(count));
  }
}

// Stores a vector that is written but never read by this kernel (ASGD's ax = param)
// without first reading its cache line from memory (a non-temporal store): a plain
// store of write-only data costs a read of the destination as well. Partial or
// unaligned vectors take the plain store. Call stream_fence() after the loop.
template <class T>
C10_ALWAYS_INLINE void st_stream(const Vec<T>& v, T* p, int64_t count) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  constexpr uintptr_t kAlign = sizeof(Vec<T>);
  if (count == Vec<T>::size() && reinterpret_cast<uintptr_t>(p) % kAlign == 0) {
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<T, float>) { _mm512_stream_ps(p, v); return; }
    if constexpr (std::is_same_v<T, double>) { _mm512_stream_pd(p, v); return; }
#else
    if constexpr (std::is_same_v<T, float>) { _mm256_stream_ps(p, v); return; }
    if constexpr (std::is_same_v<T, double>) { _mm256_stream_pd(p, v); return; }
#endif
  }
#endif
  st(v, p, count);
}

// Orders the non-temporal stores of st_stream before whatever follows (they are
// weakly ordered; another thread or the caller may read the memory next).
C10_ALWAYS_INLINE void stream_fence() {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  _mm_sfence();
#endif
}

// Calls f(offset, count) over [0, n) a vector at a time; the tail vector is partial.
// f is instantiated for the full-width case first so its loads/stores are unmasked.
template <class T, class F>
C10_ALWAYS_INLINE void for_each_vector(int64_t n, const F& f) {
  constexpr int64_t W = Vec<T>::size();
  int64_t j = 0;
  for (; j + W <= n; j += W) {
    f(j, W);
  }
  if (j < n) {
    f(j, n - j);
  }
}

template <class T>
C10_ALWAYS_INLINE Vec<T> splat(double s) {
  return Vec<T>(static_cast<T>(s));
}

// ---- the pieces of the update rules ---------------------------------------------------
// g = -grad if maximize
template <class T>
C10_ALWAYS_INLINE Vec<T> signed_grad(const Vec<T>& g, bool maximize) {
  return maximize ? g.neg() : g;
}

// a.add(b, alpha=s), e.g. grad.add(param, alpha=wd): coupled (L2) weight decay
template <class T>
C10_ALWAYS_INLINE Vec<T> add_scaled(const Vec<T>& a, const Vec<T>& b, const Vec<T>& s) {
  return at::vec::fmadd(b, s, a);
}

// a.addcmul(b, c, value=s)
template <class T>
C10_ALWAYS_INLINE Vec<T> addcmul(const Vec<T>& a, const Vec<T>& b, const Vec<T>& c, const Vec<T>& s) {
  return at::vec::fmadd(s * b, c, a);
}

// The gradient every algorithm starts from: sign for maximize, then coupled weight decay.
template <class T>
C10_ALWAYS_INLINE Vec<T> effective_grad(
    const Vec<T>& g, const Vec<T>& p, bool maximize, bool weight_decay, const Vec<T>& wd) {
  Vec<T> out = signed_grad(g, maximize);
  return weight_decay ? add_scaled(out, p, wd) : out;
}

// torch.lerp(a, b, w) for a scalar weight, with ATen's two-sided formula.
template <class T>
C10_ALWAYS_INLINE Vec<T> lerp(const Vec<T>& a, const Vec<T>& b, T w) {
  const Vec<T> diff = b - a;
  if (std::abs(w) < T(0.5)) {
    return at::vec::fmadd(Vec<T>(w), diff, a);
  }
  return at::vec::fmadd(Vec<T>(w - T(1)), diff, b);
}

// v.mul_(beta).addcmul_(g, g, value=1 - beta): exponential moving average of squares
template <class T>
C10_ALWAYS_INLINE Vec<T> ema_sq(const Vec<T>& v, const Vec<T>& g, const Vec<T>& beta,
                                const Vec<T>& one_minus_beta) {
  return addcmul(v * beta, g, g, one_minus_beta);
}

// a.addcdiv_(num, den, value=s)
template <class T>
C10_ALWAYS_INLINE Vec<T> addcdiv(const Vec<T>& a, const Vec<T>& num, const Vec<T>& den,
                                 const Vec<T>& s) {
  return a + (s * num) / den;
}

// sqrt(v) + eps: the denominator of Adagrad and RMSprop
template <class T>
C10_ALWAYS_INLINE Vec<T> rms_denom(const Vec<T>& v, const Vec<T>& eps) {
  return v.sqrt() + eps;
}

// sqrt(v) / sqrt(1 - beta2^t) + eps: Adam's bias-corrected denominator
template <class T>
C10_ALWAYS_INLINE Vec<T> rms_denom(const Vec<T>& v, const Vec<T>& bc2_sqrt, const Vec<T>& eps) {
  return v.sqrt() / bc2_sqrt + eps;
}

// torch.sign on CPU: (x > 0) - (x < 0), so -1, 0 or 1, and 0 for NaN
template <class T>
C10_ALWAYS_INLINE Vec<T> sign(const Vec<T>& x) {
  const Vec<T> zero(T(0));
  const Vec<T> out = Vec<T>::blendv(zero, Vec<T>(T(1)), x > zero);
  return Vec<T>::blendv(out, Vec<T>(T(-1)), x < zero);
}

// torch.where(cond, b, a): b where mask is set
template <class T>
C10_ALWAYS_INLINE Vec<T> select(const Vec<T>& mask, const Vec<T>& b, const Vec<T>& a) {
  return Vec<T>::blendv(a, b, mask);
}

// clamp_(lo, hi), NaN propagating
template <class T>
C10_ALWAYS_INLINE Vec<T> clamp(const Vec<T>& x, const Vec<T>& lo, const Vec<T>& hi) {
  return at::vec::minimum(at::vec::maximum(x, lo), hi);
}

}  // namespace math
}  // namespace optimlab
