// Rprop: sign-based step sizes; no host scalar beyond the group's hyperparameters.
#include "kernels.h"

namespace optimlab {
namespace {

struct RpropOp {
  double etaminus, etaplus, step_size_min, step_size_max;
  bool maximize;

  template <class T>
  void operator()(int64_t, T* const* x, int64_t n) const {
    using V = math::Vec<T>;
    T* p = x[0];
    const T* g = x[1];
    T* prev = x[2];
    T* step = x[3];
    const V zero(T(0)), one(T(1)), minus_one(T(-1));
    const V eminus = math::splat<T>(etaminus), eplus = math::splat<T>(etaplus);
    const V lo = math::splat<T>(step_size_min), hi = math::splat<T>(step_size_max);
    math::for_each_vector<T>(n, [&](int64_t j, int64_t c) {
      V gv = math::signed_grad(math::ld(g + j, c), maximize);
      // torch: factor = etaplus / etaminus / 1 for sign(g * prev) > 0 / < 0 / == 0 (sign(NaN) == 0)
      const V s = math::sign(gv * math::ld(prev + j, c));
      V factor = math::select(s > zero, eplus, s);
      factor = math::select(factor < zero, eminus, factor);
      factor = math::select(factor == zero, one, factor);
      const V sv = math::clamp(math::ld(step + j, c) * factor, lo, hi);
      gv = math::select(factor == eminus, zero, gv);  // the sign flipped: no step, forget g
      math::st(sv, step + j, c);
      math::st(gv, prev + j, c);
      math::st(math::add_scaled(math::ld(p + j, c), math::sign(gv) * sv, minus_one), p + j, c);
    });
  }
};

}  // namespace

void rprop(const TensorList& params, const TensorList& grads, const TensorList& prevs,
           const TensorList& step_sizes, const TensorList& state_steps, double etaminus, double etaplus,
           double step_size_min, double step_size_max, bool maximize, const OptTensor& grad_scale,
           const OptTensor& found_inf) {
  const RpropOp op{etaminus, etaplus, step_size_min, step_size_max, maximize};
  fused_step("rprop", op, {{&params, true}, {&grads, false}, {&prevs, true}, {&step_sizes, true}}, state_steps,
             read_amp(grad_scale, found_inf));
}

}  // namespace optimlab
