// Adamax; step_size = lr / (1 - beta1^t) comes from optimlab.adamax.adamax_bias_correction.
#include "kernels.h"

namespace optimlab {
namespace {

struct AdamaxOp {
  PerTensor step_size;
  double lerp_weight, beta2, eps, weight_decay;
  bool maximize;

  template <class T>
  void operator()(int64_t i, T* const* x, int64_t n) const {
    using V = math::Vec<T>;
    T* p = x[0];
    const T* g = x[1];
    T* m = x[2];
    T* u = x[3];
    const V wd = math::splat<T>(weight_decay), b2 = math::splat<T>(beta2), e = math::splat<T>(eps);
    const V neg_step = math::splat<T>(-step_size[i]);
    const T w1 = static_cast<T>(lerp_weight);
    const bool decay = weight_decay != 0;
    math::for_each_vector<T>(n, [&](int64_t j, int64_t c) {
      const V pv = math::ld(p + j, c);
      const V gv = math::effective_grad(math::ld(g + j, c), pv, maximize, decay, wd);
      const V mv = math::lerp(math::ld(m + j, c), gv, w1);
      const V uv = at::vec::maximum(math::ld(u + j, c) * b2, gv.abs() + e);
      math::st(mv, m + j, c);
      math::st(uv, u + j, c);
      math::st(math::addcdiv(pv, mv, uv, neg_step), p + j, c);
    });
  }
};

}  // namespace

void adamax(const TensorList& params, const TensorList& grads, const TensorList& exp_avgs,
            const TensorList& exp_infs, const TensorList& state_steps, const StepScalars& step_scalars,
            double lerp_weight, double beta2, double eps, double weight_decay, bool maximize,
            const OptTensor& grad_scale, const OptTensor& found_inf) {
  // step scalars: step_size
  fused_step("adamax", {{&params, true}, {&grads, false}, {&exp_avgs, true}, {&exp_infs, true}}, state_steps,
             step_scalars, 1, read_amp(grad_scale, found_inf), [&](const std::vector<Scalars>& s) {
               return AdamaxOp{s[0], lerp_weight, beta2, eps, weight_decay, maximize};
             });
}

}  // namespace optimlab
