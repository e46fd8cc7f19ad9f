// Host-side preparation for fused_apply (see fused_apply.h): checks, memory layout, AMP.
#include "fused_apply.h"

#include <c10/util/Exception.h>

#include <mutex>

namespace optimlab {

StepCounters::StepCounters(const TensorList& steps, size_t n, const char* name)
    : steps_(&steps), name_(name), counters_(n) {
  TORCH_CHECK(steps.size() == n, name, ": expected one step counter per tensor (", n, "), got ", steps.size());
}

void StepCounters::read(size_t i) {
  const at::Tensor& s = (*steps_)[i];
  TORCH_CHECK(s.defined() && s.numel() == 1, name_, ": the step counter of tensor ", i,
              " is not a 1-element tensor");
  Counter& c = counters_[i];
  const at::ScalarType st = s.scalar_type();
  if (s.device().is_cpu() && s.layout() == at::kStrided && (st == at::kFloat || st == at::kDouble)) {
    c.data = s.data_ptr();
    c.is_double = st == at::kDouble;
    // what `step += 1` computes in the counter's dtype
    c.next = c.is_double ? *static_cast<const double*>(c.data) + 1.0
                         : static_cast<double>(*static_cast<const float*>(c.data) + 1.0f);
  } else {  // (rare) through torch; written by commit_others
    c.next = s.add(1).item().toDouble();
  }
  if (!s.is_inference()) c.impl = s.unsafeGetTensorImpl();
}

Scalars StepCounters::next() const {
  if (counters_.empty()) return {};
  const double first = counters_[0].next;
  bool same = true;
  for (const Counter& c : counters_) same = same && c.next == first;
  if (same) return Scalars(1, first);
  Scalars out;
  out.reserve(counters_.size());
  for (const Counter& c : counters_) out.push_back(c.next);
  return out;
}

void StepCounters::commit_others() const {
  for (size_t i = 0; i < counters_.size(); ++i) {
    if (counters_[i].data == nullptr) (*steps_)[i].fill_(counters_[i].next);
  }
}

Amp read_amp(const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf) {
  Amp amp;
  if (found_inf.has_value() && found_inf->defined()) {
    TORCH_CHECK(found_inf->numel() == 1, "found_inf must be a 1-element tensor");
    amp.skip = found_inf->item().toDouble() != 0.0;
  }
  if (grad_scale.has_value() && grad_scale->defined()) {
    TORCH_CHECK(grad_scale->numel() == 1, "grad_scale must be a 1-element tensor");
    amp.unscale = true;
    amp.scale = grad_scale->item().toDouble();
  }
  return amp;
}

namespace detail {
namespace {

bool supported(at::ScalarType st) {
  return st == at::kFloat || st == at::kDouble || st == at::kBFloat16 || st == at::kHalf;
}

// Same element order in memory: equal strides on every dimension that has more than one element.
bool same_layout(const at::Tensor& a, const at::Tensor& b) {
  const auto sizes = a.sizes();
  const auto sa = a.strides();
  const auto sb = b.strides();
  for (size_t d = 0; d < sizes.size(); ++d) {
    if (sizes[d] > 1 && sa[d] != sb[d]) return false;
  }
  return true;
}

}  // namespace

Prepared prepare(const std::vector<Operand>& ops, const Amp& amp, const char* name, const TensorList* steps) {
  TORCH_CHECK(!ops.empty() && ops.size() <= static_cast<size_t>(kMaxOperands), name, ": bad operand count");
  const TensorList& params = *ops[0].tensors;
  const size_t n = params.size();
  Prepared pr;
  pr.n_ops = static_cast<int>(ops.size());
  for (int k = 0; k < pr.n_ops; ++k) {
    const bool used = ops[k].tensors != nullptr && !ops[k].tensors->empty();
    TORCH_CHECK(!used || ops[k].tensors->size() == n, name, ": operand ", k, " has ",
                ops[k].tensors->size(), " tensors, expected ", n);
    pr.written[k] = ops[k].written || (k == kGrad && amp.unscale);
  }
  pr.data.resize(n);
  pr.dtype.resize(n);
  pr.numel.resize(n);
  pr.is_double.resize(n);
  pr.bump.assign(n * kMaxOperands, nullptr);
  if (steps != nullptr) pr.counters = StepCounters(*steps, n, name);
  std::mutex copies;  // guards copy_back/keep_alive (tensors of mixed layouts: rare)
  auto prepare_one = [&](size_t i) {
    const at::Tensor& p = params[i];
    std::array<void*, kMaxOperands> data{};
    std::array<at::ScalarType, kMaxOperands> dtype{};
    dtype.fill(at::kFloat);
    std::array<const at::Tensor*, kMaxOperands> ts{};
    bool direct = p.is_non_overlapping_and_dense();
    for (int k = 0; k < pr.n_ops; ++k) {
      if (ops[k].tensors == nullptr || ops[k].tensors->empty()) continue;
      const at::Tensor& t = (*ops[k].tensors)[i];
      TORCH_CHECK(t.defined(), name, ": operand ", k, " of tensor ", i, " is undefined");
      TORCH_CHECK(t.device().is_cpu(), name, ": expected CPU tensors, got one on ", t.device());
      TORCH_CHECK(!t.is_sparse() && t.layout() == at::kStrided, name, ": expected dense strided tensors");
      TORCH_CHECK(t.sizes() == p.sizes(), name, ": operand ", k, " of tensor ", i, " has shape ",
                  t.sizes(), ", the param has ", p.sizes());
      TORCH_CHECK(supported(t.scalar_type()), name, ": unsupported dtype ", t.scalar_type(),
                  " (fp32, fp64, bf16 and fp16 are)");
      direct = direct && same_layout(t, p);
      ts[k] = &t;
      dtype[k] = t.scalar_type();
    }
    for (int k = 0; k < pr.n_ops; ++k) {
      if (ts[k] != nullptr && pr.written[k] && !ts[k]->is_inference()) {
        pr.bump[i * kMaxOperands + k] = ts[k]->unsafeGetTensorImpl();
      }
    }
    pr.numel[i] = p.numel();
    pr.is_double[i] = p.scalar_type() == at::kDouble;
    if (p.numel() > 0) {
      for (int k = 0; k < pr.n_ops; ++k) {
        if (ts[k] == nullptr) continue;
        if (direct) {
          data[k] = ts[k]->data_ptr();
          continue;
        }
        // Mixed layouts: run this tensor on contiguous copies (one extra pass, rare).
        at::Tensor c = ts[k]->contiguous();
        data[k] = c.data_ptr();
        std::lock_guard<std::mutex> lock(copies);
        if (!c.is_same(*ts[k]) && pr.written[k]) pr.copy_back.emplace_back(*ts[k], c);
        pr.keep_alive.push_back(std::move(c));
      }
    }
    pr.data[i] = data;
    pr.dtype[i] = dtype;
    if (steps != nullptr) pr.counters.read(i);
  };
  auto prepare_range = [&](int64_t first, int64_t last) {
    for (int64_t i = first; i < last; ++i) {
      for (const Operand& op : ops) {
        if (op.tensors != nullptr && !op.tensors->empty()) prefetch_ahead(*op.tensors, i);
      }
      if (steps != nullptr) prefetch_ahead(*steps, i, /*data=*/true);
      prepare_one(static_cast<size_t>(i));
    }
  };
  // Thousands of small tensors: this loop waits on memory (each tensor's objects), which
  // more threads wait on in parallel. (Any refused tensor raises; with one thread, the first.)
  if (n >= kParallelPrepareFrom) {
    run_items(static_cast<int64_t>(n), kSerialBelow, [&](int64_t first, int64_t last) { prepare_range(first, last); });
  } else {
    prepare_range(0, static_cast<int64_t>(n));
  }
  return pr;
}

void finish(Prepared& pr) {
  for (auto& [original, copy] : pr.copy_back) original.copy_(copy);
  // (the others were committed with their first chunk)
  for (size_t i = 0; i < pr.numel.size(); ++i) {
    if (pr.numel[i] == 0) commit(pr, static_cast<int64_t>(i));
  }
  if (!pr.counters.empty()) pr.counters.commit_others();
  pr.copy_back.clear();
  pr.bump.clear();
  pr.keep_alive.clear();
}

}  // namespace detail
}  // namespace optimlab
