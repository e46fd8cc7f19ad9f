// Adagrad; the step size clr = lr / (1 + (t - 1) * lr_decay) is computed on the host.
#include "kernels.h"

namespace optimlab {
namespace {

struct AdagradOp {
  PerTensor clr;
  double weight_decay, eps;
  bool maximize;

  template <class T>
  void operator()(int64_t i, T* const* x, int64_t n) const {
    using V = math::Vec<T>;
    T* p = x[0];
    const T* g = x[1];
    T* sum = x[2];
    const V wd = math::splat<T>(weight_decay), e = math::splat<T>(eps);
    const V neg_clr = math::splat<T>(-clr[i]), one(T(1));
    const bool decay = weight_decay != 0;
    math::for_each_vector<T>(n, [&](int64_t j, int64_t c) {
      const V pv = math::ld(p + j, c);
      const V gv = math::effective_grad(math::ld(g + j, c), pv, maximize, decay, wd);
      const V sv = math::addcmul(math::ld(sum + j, c), gv, gv, one);  // addcmul_(g, g, value=1)
      math::st(sv, sum + j, c);
      math::st(math::addcdiv(pv, gv, math::rms_denom(sv, e), neg_clr), p + j, c);
    });
  }
};

}  // namespace

void adagrad(const TensorList& params, const TensorList& grads, const TensorList& state_sums,
             const TensorList& state_steps, const StepScalars& step_scalars, double weight_decay, double eps,
             bool maximize, const OptTensor& grad_scale, const OptTensor& found_inf) {
  // step scalars: clr
  fused_step("adagrad", {{&params, true}, {&grads, false}, {&state_sums, true}}, state_steps, step_scalars, 1,
             read_amp(grad_scale, found_inf),
             [&](const std::vector<Scalars>& s) { return AdagradOp{s[0], weight_decay, eps, maximize}; });
}

}  // namespace optimlab
