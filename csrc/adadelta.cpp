// Adadelta: no per-step scalar; its scalars (lr, rho, 1 - rho, ...) are
// optimlab.adadelta.adadelta_group_scalars'.
#include "kernels.h"

namespace optimlab {
namespace {

struct AdadeltaOp {
  double lr, rho, one_minus_rho, eps, weight_decay;
  bool maximize;

  template <class T>
  void operator()(int64_t, T* const* x, int64_t n) const {
    using V = math::Vec<T>;
    T* p = x[0];
    const T* g = x[1];
    T* v = x[2];
    T* u = x[3];
    const V wd = math::splat<T>(weight_decay), r = math::splat<T>(rho), omr = math::splat<T>(one_minus_rho);
    const V e = math::splat<T>(eps), neg_lr = math::splat<T>(-lr);
    const bool decay = weight_decay != 0;
    math::for_each_vector<T>(n, [&](int64_t j, int64_t c) {
      const V pv = math::ld(p + j, c);
      const V gv = math::effective_grad(math::ld(g + j, c), pv, maximize, decay, wd);
      const V vv = math::ema_sq(math::ld(v + j, c), gv, r, omr);
      const V uv = math::ld(u + j, c);
      const V delta = (uv + e).sqrt() / (vv + e).sqrt() * gv;
      math::st(vv, v + j, c);
      math::st(math::ema_sq(uv, delta, r, omr), u + j, c);
      math::st(math::add_scaled(pv, delta, neg_lr), p + j, c);
    });
  }
};

}  // namespace

void adadelta(const TensorList& params, const TensorList& grads, const TensorList& square_avgs,
              const TensorList& acc_deltas, const TensorList& state_steps, double lr, double rho,
              double one_minus_rho, double eps, double weight_decay, bool maximize, const OptTensor& grad_scale,
              const OptTensor& found_inf) {
  const AdadeltaOp op{lr, rho, one_minus_rho, eps, weight_decay, maximize};
  fused_step("adadelta", op, {{&params, true}, {&grads, false}, {&square_avgs, true}, {&acc_deltas, true}},
             state_steps, read_amp(grad_scale, found_inf));
}

}  // namespace optimlab
