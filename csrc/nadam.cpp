// NAdam / NAdamW; the per-step scalars come from optimlab.nadam.nadam_scalars.
#include "kernels.h"

namespace optimlab {
namespace {

struct NadamOp {
  PerTensor bias_correction2;
  PerTensor grad_step;
  PerTensor exp_avg_step;
  double lerp_weight, beta2, one_minus_beta2, eps, weight_decay, decay_factor;
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
    const V bc2 = math::splat<T>(bias_correction2[i]);
    const V gs = math::splat<T>(grad_step[i]), ms = math::splat<T>(exp_avg_step[i]);
    const T w1 = static_cast<T>(lerp_weight);
    const bool coupled = weight_decay != 0 && !decoupled, decay_param = weight_decay != 0 && decoupled;
    math::for_each_vector<T>(n, [&](int64_t j, int64_t c) {
      V pv = math::ld(p + j, c);
      if (decay_param) pv = pv * decay;
      const V gv = math::effective_grad(math::ld(g + j, c), pv, maximize, coupled, wd);
      const V mv = math::lerp(math::ld(m + j, c), gv, w1);
      const V vv = math::ema_sq(math::ld(v + j, c), gv, b2, omb2);
      math::st(mv, m + j, c);
      math::st(vv, v + j, c);
      const V denom = (vv / bc2).sqrt() + e;
      math::st(math::addcdiv(math::addcdiv(pv, gv, denom, gs), mv, denom, ms), p + j, c);
    });
  }
};

}  // namespace

void nadam(const TensorList& params, const TensorList& grads, const TensorList& exp_avgs,
           const TensorList& exp_avg_sqs, const TensorList& state_steps, const StepScalars& step_scalars,
           double lerp_weight, double beta2, double one_minus_beta2, double eps, double weight_decay,
           double decay_factor, bool decoupled, bool maximize, const OptTensor& grad_scale,
           const OptTensor& found_inf) {
  // step scalars: bias_correction2, grad_step, exp_avg_step
  fused_step("nadam", {{&params, true}, {&grads, false}, {&exp_avgs, true}, {&exp_avg_sqs, true}}, state_steps,
             step_scalars, 3, read_amp(grad_scale, found_inf), [&](const std::vector<Scalars>& s) {
               return NadamOp{s[0], s[1], s[2], lerp_weight, beta2, one_minus_beta2, eps, weight_decay,
                              decay_factor, decoupled, maximize};
             });
}

}  // namespace optimlab
