// RAdam / RAdamW; bias corrections and the rectification term come from
// optimlab.radam.radam_scalars (rect == 0 while unrectified).
#include "kernels.h"

namespace optimlab {
namespace {

struct RadamOp {
  PerTensor bias_correction1;
  PerTensor bc2_sqrt;
  PerTensor rect;
  double lr, lerp_weight, beta2, one_minus_beta2, eps, weight_decay, decay_factor;
  bool decoupled, maximize;

  template <class T>
  void operator()(int64_t i, T* const* x, int64_t n) const {
    using V = math::Vec<T>;
    T* p = x[0];
    const T* g = x[1];
    T* m = x[2];
    T* v = x[3];
    const V wd = math::splat<T>(weight_decay), decay = math::splat<T>(decay_factor);
    const V b2 = math::splat<T>(beta2), omb2 = math::splat<T>(one_minus_beta2), e = math::splat<T>(eps);
    const V bc1 = math::splat<T>(bias_correction1[i]), bc2 = math::splat<T>(bc2_sqrt[i]);
    const V r = math::splat<T>(rect[i]), lrv = math::splat<T>(lr), minus_one(T(-1));
    const T w1 = static_cast<T>(lerp_weight);
    const bool coupled = weight_decay != 0 && !decoupled, decay_param = weight_decay != 0 && decoupled;
    const bool rectified = rect[i] > 0;
    math::for_each_vector<T>(n, [&](int64_t j, int64_t c) {
      V pv = math::ld(p + j, c);
      if (decay_param) pv = pv * decay;
      const V gv = math::effective_grad(math::ld(g + j, c), pv, maximize, coupled, wd);
      const V mv = math::lerp(math::ld(m + j, c), gv, w1);
      const V vv = math::ema_sq(math::ld(v + j, c), gv, b2, omb2);
      math::st(mv, m + j, c);
      math::st(vv, v + j, c);
      V update = mv / bc1 * lrv;
      if (rectified) update = update * (bc2 / (vv.sqrt() + e)) * r;
      math::st(math::add_scaled(pv, update, minus_one), p + j, c);
    });
  }
};

}  // namespace

void radam(const TensorList& params, const TensorList& grads, const TensorList& exp_avgs,
           const TensorList& exp_avg_sqs, const TensorList& state_steps, const StepScalars& step_scalars,
           double lr, double lerp_weight, double beta2, double one_minus_beta2, double eps, double weight_decay,
           double decay_factor, bool decoupled, bool maximize, const OptTensor& grad_scale,
           const OptTensor& found_inf) {
  // step scalars: bias_correction1, bc2_sqrt, rect
  fused_step("radam", {{&params, true}, {&grads, false}, {&exp_avgs, true}, {&exp_avg_sqs, true}}, state_steps,
             step_scalars, 3, read_amp(grad_scale, found_inf), [&](const std::vector<Scalars>& s) {
               return RadamOp{s[0], s[1], s[2], lr, lerp_weight, beta2, one_minus_beta2, eps, weight_decay,
                              decay_factor, decoupled, maximize};
             });
}

}  // namespace optimlab
