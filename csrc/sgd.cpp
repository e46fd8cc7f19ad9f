// SGD with optional (Nesterov) momentum and dampening; its scalars (lr, weight_decay, momentum,
// 1 - dampening) are optimlab.sgd.sgd_group_scalars'.
#include "kernels.h"

namespace optimlab {
namespace {

struct SgdOp {
  const std::vector<bool>& first_step;  // the momentum buffer is new: it becomes a copy of g
  double lr, weight_decay, momentum, one_minus_dampening;
  bool nesterov, maximize;

  template <class T>
  void operator()(int64_t i, T* const* x, int64_t n) const {
    using V = math::Vec<T>;
    T* p = x[0];
    const T* g = x[1];
    T* buf = x[2];
    const V wd = math::splat<T>(weight_decay), mom = math::splat<T>(momentum);
    const V keep = math::splat<T>(one_minus_dampening), neg_lr = math::splat<T>(-lr);
    const bool decay = weight_decay != 0, use_momentum = momentum != 0, first = use_momentum && first_step[i];
    math::for_each_vector<T>(n, [&](int64_t j, int64_t c) {
      const V pv = math::ld(p + j, c);
      V gv = math::effective_grad(math::ld(g + j, c), pv, maximize, decay, wd);
      if (use_momentum) {
        const V bv = first ? gv : math::add_scaled(math::ld(buf + j, c) * mom, gv, keep);
        math::st(bv, buf + j, c);
        gv = nesterov ? math::add_scaled(gv, bv, mom) : bv;
      }
      math::st(math::add_scaled(pv, gv, neg_lr), p + j, c);
    });
  }
};

}  // namespace

void sgd(const TensorList& params, const TensorList& grads, const TensorList& momentum_buffers,
         const std::vector<bool>& first_step, double lr, double weight_decay, double momentum,
         double one_minus_dampening, bool nesterov, bool maximize, const OptTensor& grad_scale,
         const OptTensor& found_inf) {
  const bool use_momentum = momentum != 0;
  TORCH_CHECK(!use_momentum || (momentum_buffers.size() == params.size() && first_step.size() == params.size()),
              "sgd: momentum needs one buffer and one first_step flag per param");
  const SgdOp op{first_step, lr, weight_decay, momentum, one_minus_dampening, nesterov, maximize};
  fused_apply("sgd", op, {{&params, true}, {&grads, false}, {use_momentum ? &momentum_buffers : nullptr, true}},
              read_amp(grad_scale, found_inf));
}

}  // namespace optimlab
