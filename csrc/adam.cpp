// Adam / AdamW: the elementwise update; step sizes come from optimlab.adam.adam_scalars.
#include "kernels.h"

namespace optimlab {
namespace {

struct AdamOp {
  PerTensor step_size;  // lr / (1 - beta1^t), per tensor
  PerTensor bc2_sqrt;   // sqrt(1 - beta2^t), per tensor
  double lerp_weight, beta2, one_minus_beta2, eps, weight_decay, decay_factor;
  bool decoupled, amsgrad, maximize;

  template <class T>
  void operator()(int64_t i, T* const* x, int64_t n) const {
    using V = math::Vec<T>;
    T* p = x[0];
    const T* g = x[1];
    T* m = x[2];
    T* v = x[3];
    T* vmax = x[4];
    const V wd = math::splat<T>(weight_decay), decay = math::splat<T>(decay_factor);
    const V b2 = math::splat<T>(beta2), omb2 = math::splat<T>(one_minus_beta2);
    const V e = math::splat<T>(eps), bc2 = math::splat<T>(bc2_sqrt[i]);
    const V neg_step = math::splat<T>(-step_size[i]);
    const T w1 = static_cast<T>(lerp_weight);
    const bool coupled = weight_decay != 0 && !decoupled;
    const bool decay_param = weight_decay != 0 && decoupled;
    math::for_each_vector<T>(n, [&](int64_t j, int64_t c) {
      V pv = math::ld(p + j, c);
      if (decay_param) pv = pv * decay;
      const V gv = math::effective_grad(math::ld(g + j, c), pv, maximize, coupled, wd);
      const V mv = math::lerp(math::ld(m + j, c), gv, w1);
      V vv = math::ema_sq(math::ld(v + j, c), gv, b2, omb2);
      math::st(mv, m + j, c);
      math::st(vv, v + j, c);
      if (amsgrad) {
        vv = at::vec::maximum(math::ld(vmax + j, c), vv);
        math::st(vv, vmax + j, c);
      }
      math::st(math::addcdiv(pv, mv, math::rms_denom(vv, bc2, e), neg_step), p + j, c);
    });
  }
};

}  // namespace

void adam(const TensorList& params, const TensorList& grads, const TensorList& exp_avgs,
          const TensorList& exp_avg_sqs, const TensorList& max_exp_avg_sqs, const TensorList& state_steps,
          const StepScalars& step_scalars, double lerp_weight, double beta2, double one_minus_beta2,
          double eps, double weight_decay, double decay_factor, bool decoupled, bool amsgrad, bool maximize,
          const OptTensor& grad_scale, const OptTensor& found_inf) {
  TORCH_CHECK(!amsgrad || max_exp_avg_sqs.size() == params.size(), "adam: amsgrad needs max_exp_avg_sqs");
  // step scalars: step_size = lr / (1 - beta1^t), bc2_sqrt = sqrt(1 - beta2^t)
  fused_step("adam",
             {{&params, true}, {&grads, false}, {&exp_avgs, true}, {&exp_avg_sqs, true},
              {amsgrad ? &max_exp_avg_sqs : nullptr, true}},
             state_steps, step_scalars, 2, read_amp(grad_scale, found_inf), [&](const std::vector<Scalars>& s) {
               return AdamOp{s[0], s[1], lerp_weight, beta2, one_minus_beta2, eps, weight_decay, decay_factor,
                             decoupled, amsgrad, maximize};
             });
}

}  // namespace optimlab
