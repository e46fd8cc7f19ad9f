// Entry points of optimlab's fused CPU kernels (bound to Python in bindings.cpp).
//
// Each takes the tensor lists of one param group (params, grads, state..., the step
// counters), the host's callback for the step-dependent scalars (step sizes, bias
// corrections: the algorithm's shared Python scalar function; fused_apply.h's step
// protocol), the group's hyperparameters as doubles, and torch's fused AMP arguments
// (grad_scale, found_inf).
#pragma once

#include <functional>
#include <initializer_list>
#include <optional>
#include <vector>

#include "fused_apply.h"

namespace optimlab {

using OptTensor = std::optional<at::Tensor>;

// Host scalars (step sizes, bias corrections) come one per tensor, or as a single value
// for all of them when every tensor is at the same step (the usual case: the host then
// computes and passes one value instead of a list as long as the group).
inline void check_per_tensor(const char* name, const TensorList& params,
                             std::initializer_list<const Scalars*> scalars) {
  for (const Scalars* s : scalars) {
    TORCH_CHECK(s->size() == params.size() || s->size() == 1, name, ": expected one scalar per tensor (",
                params.size(), ") or one for all, got ", s->size());
  }
}

// Tensor i's host scalar from a list checked by check_per_tensor.
class PerTensor {
 public:
  PerTensor(const Scalars& values) : values_(values) {}  // NOLINT: converts implicitly
  double operator[](int64_t i) const { return values_.size() == 1 ? values_[0] : values_[i]; }

 private:
  const Scalars& values_;
};

// Step scalars (columns the callback returns), per kernel: adam: step_size, bc2_sqrt;
// adagrad: clr; adamax: step_size; nadam: bias_correction2, grad_step, exp_avg_step; radam:
// bias_correction1, bc2_sqrt, rect; asgd: none (eta and mu are the state's; its callback
// computes the next ones); adadelta, rmsprop, rprop: no callback.
void adam(const TensorList& params, const TensorList& grads, const TensorList& exp_avgs,
          const TensorList& exp_avg_sqs, const TensorList& max_exp_avg_sqs, const TensorList& state_steps,
          const StepScalars& step_scalars, double lerp_weight, double beta2, double one_minus_beta2, double eps,
          double weight_decay, double decay_factor, bool decoupled, bool amsgrad, bool maximize,
          const OptTensor& grad_scale, const OptTensor& found_inf);

void sgd(const TensorList& params, const TensorList& grads, const TensorList& momentum_buffers,
         const std::vector<bool>& first_step, double lr, double weight_decay, double momentum,
         double one_minus_dampening, bool nesterov, bool maximize, const OptTensor& grad_scale,
         const OptTensor& found_inf);

void adagrad(const TensorList& params, const TensorList& grads, const TensorList& state_sums,
             const TensorList& state_steps, const StepScalars& step_scalars, double weight_decay, double eps,
             bool maximize, const OptTensor& grad_scale, const OptTensor& found_inf);

void adadelta(const TensorList& params, const TensorList& grads, const TensorList& square_avgs,
              const TensorList& acc_deltas, const TensorList& state_steps, double lr, double rho,
              double one_minus_rho, double eps, double weight_decay, bool maximize, const OptTensor& grad_scale,
              const OptTensor& found_inf);

void adamax(const TensorList& params, const TensorList& grads, const TensorList& exp_avgs,
            const TensorList& exp_infs, const TensorList& state_steps, const StepScalars& step_scalars,
            double lerp_weight, double beta2, double eps, double weight_decay, bool maximize,
            const OptTensor& grad_scale, const OptTensor& found_inf);

void asgd(const TensorList& params, const TensorList& grads, const TensorList& axs, const TensorList& state_steps,
          const StepScalars& step_scalars, const Scalars& eta, const Scalars& mu, const Scalars& decay,
          double weight_decay, bool maximize, const OptTensor& grad_scale, const OptTensor& found_inf);

void nadam(const TensorList& params, const TensorList& grads, const TensorList& exp_avgs,
           const TensorList& exp_avg_sqs, const TensorList& state_steps, const StepScalars& step_scalars,
           double lerp_weight, double beta2, double one_minus_beta2, double eps, double weight_decay,
           double decay_factor, bool decoupled, bool maximize, const OptTensor& grad_scale,
           const OptTensor& found_inf);

void radam(const TensorList& params, const TensorList& grads, const TensorList& exp_avgs,
           const TensorList& exp_avg_sqs, const TensorList& state_steps, const StepScalars& step_scalars,
           double lr, double lerp_weight, double beta2, double one_minus_beta2, double eps, double weight_decay,
           double decay_factor, bool decoupled, bool maximize, const OptTensor& grad_scale,
           const OptTensor& found_inf);

void rmsprop(const TensorList& params, const TensorList& grads, const TensorList& square_avgs,
             const TensorList& momentum_buffers, const TensorList& grad_avgs, const TensorList& state_steps,
             double lr, double alpha, double one_minus_alpha, double eps, double weight_decay, double momentum,
             bool centered, bool maximize, const OptTensor& grad_scale, const OptTensor& found_inf);

void rprop(const TensorList& params, const TensorList& grads, const TensorList& prevs,
           const TensorList& step_sizes, const TensorList& state_steps, double etaminus, double etaplus,
           double step_size_min, double step_size_max, bool maximize, const OptTensor& grad_scale,
           const OptTensor& found_inf);

// Adafactor's call back to the host between its passes (csrc/adafactor.cpp), once per wave of
// params first, first + 1, ...: from the norm of each param (before weight decay) and of its
// update U, as Tensor.norm() rounds them, the coefficient of U in the param's update
// (optimlab.adafactor's scalar functions).
using AdafactorCoefficients =
    std::function<Scalars(int64_t first, const Scalars& param_norms, const Scalars& update_norms)>;

// row_vars, col_vars: one per param of 2+ dims, in order; variances: one per other param.
// Step scalars: one_minus_beta2_t.
void adafactor(const TensorList& params, const TensorList& grads, const TensorList& row_vars,
               const TensorList& col_vars, const TensorList& variances, const TensorList& state_steps,
               const StepScalars& step_scalars, double eps1, double weight_decay, double decay_factor,
               bool maximize, const AdafactorCoefficients& coefficients, const OptTensor& grad_scale,
               const OptTensor& found_inf);

// The low-precision write-back (optimlab/low_precision.py, csrc/low_precision.cpp): float32
// working copies `works` written into bfloat16/float16 `params` (CPU, not 0-dim) rounded to
// nearest (mode kLpNearest), with Kahan compensation `comps` (kLpKahan; same dtype and layout
// as the params) or stochastically (kLpStochastic, bfloat16 only, contiguous tensors; Philox
// key seeds[i], counters (index_base[i] + element index, steps[i]) as 2x32 bits each).
// Nearest/Kahan take any dense layout shared by a param and its operands.
constexpr int64_t kLpNearest = 0, kLpKahan = 1, kLpStochastic = 2;
void lp_write(const TensorList& params, const TensorList& works, const TensorList& comps, int64_t mode,
              const std::vector<uint64_t>& seeds, const std::vector<uint64_t>& steps,
              const std::vector<int64_t>& index_base);

// Host helpers for the 0-dim state scalars (step, eta, mu, mu_product): one call per list
// instead of one torch op per tensor.
std::vector<double> add_to_scalars(const TensorList& scalars, double delta);  // in place; new values
std::vector<double> read_scalars(const TensorList& scalars);
void write_scalars(const TensorList& scalars, const std::vector<double>& values);

}  // namespace optimlab
