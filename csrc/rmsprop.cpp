// RMSprop, optionally centered and with momentum; its scalars (lr, alpha, 1 - alpha, ...) are
// optimlab.rmsprop.rmsprop_group_scalars'.
#include "kernels.h"

namespace optimlab {
namespace {

struct RmspropOp {
  double lr, alpha, one_minus_alpha, eps, weight_decay, momentum;
  bool centered, maximize;

  template <class T>
  void operator()(int64_t, T* const* x, int64_t n) const {
    using V = math::Vec<T>;
    T* p = x[0];
    const T* g = x[1];
    T* v = x[2];
    T* buf = x[3];
    T* gavg = x[4];
    const V wd = math::splat<T>(weight_decay), a = math::splat<T>(alpha), oma = math::splat<T>(one_minus_alpha);
    const V e = math::splat<T>(eps), mom = math::splat<T>(momentum), neg_lr = math::splat<T>(-lr);
    const V minus_one(T(-1)), one(T(1));
    const T w = static_cast<T>(one_minus_alpha);
    const bool decay = weight_decay != 0, use_momentum = momentum > 0;
    math::for_each_vector<T>(n, [&](int64_t j, int64_t c) {
      const V pv = math::ld(p + j, c);
      const V gv = math::effective_grad(math::ld(g + j, c), pv, maximize, decay, wd);
      const V vv = math::ema_sq(math::ld(v + j, c), gv, a, oma);
      math::st(vv, v + j, c);
      V avg;
      if (centered) {
        const V ga = math::lerp(math::ld(gavg + j, c), gv, w);
        math::st(ga, gavg + j, c);
        avg = math::rms_denom(math::addcmul(vv, ga, ga, minus_one), e);
      } else {
        avg = math::rms_denom(vv, e);
      }
      if (use_momentum) {
        const V bv = math::addcdiv(math::ld(buf + j, c) * mom, gv, avg, one);
        math::st(bv, buf + j, c);
        math::st(math::add_scaled(pv, bv, neg_lr), p + j, c);
      } else {
        math::st(math::addcdiv(pv, gv, avg, neg_lr), p + j, c);
      }
    });
  }
};

}  // namespace

void rmsprop(const TensorList& params, const TensorList& grads, const TensorList& square_avgs,
             const TensorList& momentum_buffers, const TensorList& grad_avgs, const TensorList& state_steps,
             double lr, double alpha, double one_minus_alpha, double eps, double weight_decay, double momentum,
             bool centered, bool maximize, const OptTensor& grad_scale, const OptTensor& found_inf) {
  const bool use_momentum = momentum > 0;
  TORCH_CHECK(!use_momentum || momentum_buffers.size() == params.size(), "rmsprop: momentum needs buffers");
  TORCH_CHECK(!centered || grad_avgs.size() == params.size(), "rmsprop: centered needs grad_avgs");
  const RmspropOp op{lr, alpha, one_minus_alpha, eps, weight_decay, momentum, centered, maximize};
  fused_step("rmsprop", op,
             {{&params, true},
              {&grads, false},
              {&square_avgs, true},
              {use_momentum ? &momentum_buffers : nullptr, true},
              {centered ? &grad_avgs : nullptr, true}},
             state_steps, read_amp(grad_scale, found_inf));
}

}  // namespace optimlab
