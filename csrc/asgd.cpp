// ASGD; eta and mu (per tensor) are the state's (optimlab.asgd.asgd_next), the decay
// 1 - lambd * eta is optimlab.asgd.asgd_decay's.
#include "kernels.h"

namespace optimlab {
namespace {

struct AsgdOp {
  PerTensor eta;
  PerTensor mu;
  PerTensor decay_factor;
  double weight_decay;
  bool maximize;

  template <class T>
  void operator()(int64_t i, T* const* x, int64_t n, bool in_memory) const {
    using V = math::Vec<T>;
    T* p = x[0];
    const T* g = x[1];
    T* ax = x[2];
    const V wd = math::splat<T>(weight_decay), shrink = math::splat<T>(decay_factor[i]);
    const V neg_eta = math::splat<T>(-eta[i]), muv = math::splat<T>(mu[i]);
    const bool decay = weight_decay != 0, average = mu[i] != 1;
    math::for_each_vector<T>(n, [&](int64_t j, int64_t c) {
      const V pv = math::ld(p + j, c);
      const V gv = math::effective_grad(math::ld(g + j, c), pv, maximize, decay, wd);
      const V pn = math::add_scaled(pv * shrink, gv, neg_eta);
      math::st(pn, p + j, c);
      if (average) {
        const V av = math::ld(ax + j, c);
        math::st(av + (pn - av) * muv, ax + j, c);
      } else if (in_memory) {
        math::st_stream(pn, ax + j, c);  // ax = param: written, never read
      } else {
        math::st(pn, ax + j, c);  // a conversion buffer, read right back: keep it in cache
      }
    });
    if (!average && in_memory) math::stream_fence();
  }
};

}  // namespace

void asgd(const TensorList& params, const TensorList& grads, const TensorList& axs, const TensorList& state_steps,
          const StepScalars& step_scalars, const Scalars& eta, const Scalars& mu, const Scalars& decay,
          double weight_decay, bool maximize, const OptTensor& grad_scale, const OptTensor& found_inf) {
  check_per_tensor("asgd", params, {&eta, &mu, &decay});
  const AsgdOp op{eta, mu, decay, weight_decay, maximize};
  // (eta and mu are the state's, read before the step; the callback computes the next ones)
  fused_step("asgd", op, {{&params, true}, {&grads, false}, {&axs, true}}, state_steps,
             read_amp(grad_scale, found_inf), step_scalars);
}

}  // namespace optimlab
