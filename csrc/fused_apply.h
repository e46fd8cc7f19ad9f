// The driver every fused CPU kernel runs through: one pass over memory per tensor.
//
// A kernel is a functor with
//     template <class T> void operator()(int64_t tensor, T* const* x, int64_t n) const;
// that updates n elements of its operands x[0..] (param, grad, state...) in the
// math type T (double for fp64 params, float otherwise). A kernel that also takes a
// fourth argument, `bool in_memory`, learns whether x points at the tensors' own
// memory (true) or at small conversion buffers (bf16/fp16/mixed dtypes): non-temporal
// stores pay off only in the first case. The driver
//   * checks the operands (CPU, same shapes, fp32/fp64/bf16/fp16);
//   * runs tensors whose operands share one dense memory layout in place, in
//     memory order (contiguous, channels_last, any dense permutation); any other
//     tensor (a transposed param with a contiguous grad, strided views, expanded
//     grads) runs on contiguous copies that are copied back afterwards;
//   * splits all tensors into chunks and runs them with at::parallel_for, one
//     parallel region per step for the whole list;
//   * converts blocks of bf16/fp16 (or any operand whose dtype is not T) to T in a
//     small on-stack buffer, so the math is always in T and rounded once;
//   * implements torch's fused AMP contract: nothing at all happens when
//     found_inf != 0; otherwise grads are divided by grad_scale, written back
//     unscaled (as torch's _fused_adam_ does), and the update uses them;
//   * with fused_step, advances the params' step counters (the step protocol below).
//
// The step protocol (fused_step), for the algorithms with step counters: the driver reads
// each param's counter while it checks the operands, hands the next step values (counter + 1,
// as the counter's dtype rounds it; one value when all are equal) to the host's callback,
// which returns the step-dependent scalars (the algorithm's shared Python scalar function),
// runs the update, and writes counter + 1 with each tensor's update. Nothing is written
// before every operand was accepted and the callback returned, and nothing at all when
// found_inf != 0: a refused or skipped step changes nothing, and nothing is taken back.
#pragma once

#include <ATen/Config.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <array>
#include <functional>
#include <optional>
#include <type_traits>
#include <vector>

#include "optim_math.h"

namespace optimlab {

// The tensors of one list argument, borrowed from the caller: no reference counts are taken
// (the Python binding's caster, bindings.cpp, holds the list's items for the call; thousands
// of at::Tensor copies cost more than the update of small tensors). Index it like a vector.
class TensorList {
 public:
  TensorList() = default;
  explicit TensorList(const std::vector<at::Tensor>& tensors) {  // (tensors must outlive it)
    items_.reserve(tensors.size());
    for (const at::Tensor& t : tensors) items_.push_back(&t);
  }
  void reserve(size_t n) { items_.reserve(n); }
  void push_back(const at::Tensor* t) { items_.push_back(t); }
  size_t size() const { return items_.size(); }
  bool empty() const { return items_.empty(); }
  const at::Tensor& operator[](size_t i) const { return *items_[i]; }

 private:
  std::vector<const at::Tensor*> items_;
};

using Scalars = std::vector<double>;
// The host's step-scalars callback (the step protocol above): the next step values (one per
// tensor, or one for all) -> columns of per-tensor scalars (each one per tensor, or one for all).
using StepScalars = std::function<std::vector<Scalars>(const Scalars& next_steps)>;

constexpr int kMaxOperands = 6;
constexpr int64_t kBlock = 256;              // elements converted per block (bf16/fp16/mixed)
constexpr int64_t kChunk = 1 << 14;          // elements per parallel work item
constexpr int64_t kSerialBelow = 1 << 15;    // fewer elements in total: stay on one thread
constexpr int kGrad = 1;                     // operand 1 is always the gradient
constexpr size_t kParallelPrepareFrom = 512;  // tensors: prepare() splits them between threads

struct Operand {
  const TensorList* tensors = nullptr;  // nullptr or empty: not used by this step
  bool written = false;
};

struct Amp {
  bool skip = false;       // found_inf != 0: do nothing
  bool unscale = false;    // grad_scale given
  double scale = 1.0;
};

Amp read_amp(const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf);

// A loop over thousands of small tensors is bound by cache misses on each one's TensorImpl
// and StorageImpl (perf: half of prepare()'s time on the first load of each). Called at
// tensor i, this prefetches the objects of the tensors a few places ahead, overlapping them.
// With `data`, also the first line of the data of the tensor two places ahead (0-dim step
// counters: their value is read next to their objects).
inline void prefetch_ahead(const TensorList& tensors, size_t i, bool data = false) {
  constexpr size_t kImplAhead = 8, kStorageAhead = 4, kDataAhead = 2;
  auto lines = [](const void* p, int n) {
    for (int l = 0; l < n; ++l) __builtin_prefetch(static_cast<const char*>(p) + 64 * l);
  };
  if (i + kImplAhead < tensors.size()) lines(tensors[i + kImplAhead].unsafeGetTensorImpl(), 4);
  if (i + kStorageAhead < tensors.size()) {
    const at::Tensor& t = tensors[i + kStorageAhead];  // (its TensorImpl was prefetched before)
    if (t.has_storage()) lines(t.storage().unsafeGetStorageImpl(), 2);
  }
  if (data && i + kDataAhead < tensors.size()) {
    const at::Tensor& t = tensors[i + kDataAhead];  // (its StorageImpl was prefetched before)
    if (t.has_storage() && t.storage().data() != nullptr) lines(t.storage().data(), 1);
  }
}

// The params' step counters in the step protocol (see the header comment): each is read
// (checked, its next value computed) while the operands are checked, and advanced to counter + 1
// when its tensor is updated. Empty when default-constructed (a kernel without counters).
class StepCounters {
 public:
  StepCounters() = default;
  StepCounters(const TensorList& steps, size_t n, const char* name);  // one counter per tensor
  bool empty() const { return steps_ == nullptr; }
  void read(size_t i);   // (tensor i's counter; threads may read different i at once)
  Scalars next() const;  // the next step values for the host: one value when all agree (usual)
  // counter i := counter + 1, for a CPU float/double counter (the usual case)
  void commit(size_t i) const {
    const Counter& c = counters_[i];
    if (c.data == nullptr) return;
    if (c.is_double) {
      *static_cast<double*>(c.data) = c.next;
    } else {
      *static_cast<float*>(c.data) = static_cast<float>(c.next);
    }
    if (c.impl != nullptr) c.impl->bump_version();
  }
  void commit_others() const;  // the other counters, through torch (rare: another dtype or device)

 private:
  struct Counter {
    void* data = nullptr;             // a CPU float/double counter's value (nullptr: commit_others)
    c10::TensorImpl* impl = nullptr;  // whose version advances when data is written (nullptr: none)
    bool is_double = false;
    double next = 0;                  // counter + 1, as the counter's dtype rounds it
  };
  const TensorList* steps_ = nullptr;
  const char* name_ = "";
  std::vector<Counter> counters_;
};

namespace detail {

struct Prepared {
  int n_ops = 0;
  StepCounters counters;  // (fused_step; empty for fused_apply)
  std::vector<std::array<void*, kMaxOperands>> data;
  std::vector<std::array<at::ScalarType, kMaxOperands>> dtype;
  std::vector<int64_t> numel;
  std::vector<char> is_double;  // math type of tensor i (not vector<bool>: filled in parallel)
  std::vector<std::pair<at::Tensor, at::Tensor>> copy_back;  // (original, contiguous copy)
  std::vector<at::Tensor> keep_alive;
  std::vector<c10::TensorImpl*> bump;  // [tensor * kMaxOperands + operand]: written tensors whose
                                       // version counter advances, or nullptr (the caller's lists
                                       // keep them alive)
  std::array<bool, kMaxOperands> written{};
};

// Validates the operands, resolves each tensor's memory (see the header comment) and reads
// the step counters `steps` (optional: one 1-element tensor per param).
Prepared prepare(const std::vector<Operand>& ops, const Amp& amp, const char* name,
                 const TensorList* steps = nullptr);

void finish(Prepared& prepared);

// Advances the version counters of tensor i's written operands, as torch's in-place ops do,
// so autograd still detects a param modified after it was saved for backward. (Called with
// each tensor's first chunk, on the thread that updates it: every counter is its own heap
// object, and thousands of them cost a cache miss each, better waited for in parallel.)
inline void bump_versions(const Prepared& pr, int64_t i) {
  for (int k = 0; k < kMaxOperands; ++k) {
    if (c10::TensorImpl* t = pr.bump[i * kMaxOperands + k]) t->bump_version();
  }
}

// Tensor i is (being) updated: its written operands' versions advance, and its step counter
// becomes counter + 1 (StepCounters::commit; finish() commits the others).
inline void commit(const Prepared& pr, int64_t i) {
  bump_versions(pr, i);
  if (!pr.counters.empty()) pr.counters.commit(static_cast<size_t>(i));
}

template <class T>
constexpr at::ScalarType scalar_type_of() {
  return std::is_same_v<T, double> ? at::kDouble : at::kFloat;
}

template <class T, class S>
inline void convert_in_scalar(const S* src, T* dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<T>(static_cast<float>(src[j]));
}

template <class T>
inline void load_block(at::ScalarType st, const void* base, int64_t off, T* dst, int64_t n) {
  using fVec = at::vec::Vectorized<float>;
  switch (st) {
    case at::kBFloat16:
    case at::kHalf: {
      if constexpr (std::is_same_v<T, float>) {
        auto run = [&](auto tag) {
          using R = decltype(tag);
          using rVec = at::vec::Vectorized<R>;
          const R* src = static_cast<const R*>(base) + off;
          int64_t j = 0;
          for (; j + rVec::size() <= n; j += rVec::size()) {
            auto [a, b] = at::vec::convert_to_float<R>(rVec::loadu(src + j));
            a.store(dst + j);
            b.store(dst + j + fVec::size());
          }
          for (; j < n; ++j) dst[j] = static_cast<float>(src[j]);
        };
        if (st == at::kBFloat16) run(c10::BFloat16()); else run(c10::Half());
      } else if (st == at::kBFloat16) {
        convert_in_scalar(static_cast<const c10::BFloat16*>(base) + off, dst, n);
      } else {
        convert_in_scalar(static_cast<const c10::Half*>(base) + off, dst, n);
      }
      break;
    }
    case at::kFloat: {
      const float* src = static_cast<const float*>(base) + off;
      for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<T>(src[j]);
      break;
    }
    case at::kDouble: {
      const double* src = static_cast<const double*>(base) + off;
      for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<T>(src[j]);
      break;
    }
    default:
      break;  // rejected by prepare()
  }
}

template <class T>
inline void store_block(at::ScalarType st, void* base, int64_t off, const T* src, int64_t n) {
  using fVec = at::vec::Vectorized<float>;
  switch (st) {
    case at::kBFloat16:
    case at::kHalf: {
      auto run = [&](auto tag) {
        using R = decltype(tag);
        using rVec = at::vec::Vectorized<R>;
        R* dst = static_cast<R*>(base) + off;
        int64_t j = 0;
        if constexpr (std::is_same_v<T, float>) {
          for (; j + rVec::size() <= n; j += rVec::size()) {
            at::vec::convert_from_float<R>(fVec::loadu(src + j), fVec::loadu(src + j + fVec::size()))
                .store(dst + j);
          }
        }
        for (; j < n; ++j) dst[j] = static_cast<R>(static_cast<float>(src[j]));
      };
      if (st == at::kBFloat16) run(c10::BFloat16()); else run(c10::Half());
      break;
    }
    case at::kFloat: {
      float* dst = static_cast<float*>(base) + off;
      for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<float>(src[j]);
      break;
    }
    case at::kDouble: {
      double* dst = static_cast<double*>(base) + off;
      for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<double>(src[j]);
      break;
    }
    default:
      break;
  }
}

template <class T>
inline void unscale(T* g, int64_t n, double scale) {
  using V = math::Vec<T>;
  const V s(static_cast<T>(scale));
  math::for_each_vector<T>(n, [&](int64_t j, int64_t c) { math::st(math::ld(g + j, c) / s, g + j, c); });
}

template <class T, class Op>
inline void invoke_op(const Op& op, int64_t i, T* const* x, int64_t n, bool in_memory) {
  if constexpr (std::is_invocable_v<const Op&, int64_t, T* const*, int64_t, bool>) {
    op(i, x, n, in_memory);
  } else {
    op(i, x, n);
  }
}

template <class T, class Op>
void run_range(const Op& op, const Prepared& pr, const Amp& amp, int64_t i, int64_t begin, int64_t end) {
  constexpr at::ScalarType native = scalar_type_of<T>();
  const auto& data = pr.data[i];
  const auto& dtype = pr.dtype[i];
  bool all_native = true;
  for (int k = 0; k < pr.n_ops; ++k) {
    all_native = all_native && (data[k] == nullptr || dtype[k] == native);
  }
  T* x[kMaxOperands] = {};
  if (all_native) {  // the common case: straight on the tensors' memory
    for (int k = 0; k < pr.n_ops; ++k) {
      x[k] = data[k] == nullptr ? nullptr : static_cast<T*>(data[k]) + begin;
    }
    if (amp.unscale) unscale(x[kGrad], end - begin, amp.scale);
    invoke_op(op, i, x, end - begin, /*in_memory=*/true);
    return;
  }
  alignas(64) T buf[kMaxOperands][kBlock];
  for (int64_t off = begin; off < end; off += kBlock) {
    const int64_t n = std::min(kBlock, end - off);
    for (int k = 0; k < pr.n_ops; ++k) {
      if (data[k] == nullptr) {
        x[k] = nullptr;
      } else if (dtype[k] == native) {
        x[k] = static_cast<T*>(data[k]) + off;
      } else {
        load_block<T>(dtype[k], data[k], off, buf[k], n);
        x[k] = buf[k];
      }
    }
    if (amp.unscale) unscale(x[kGrad], n, amp.scale);
    invoke_op(op, i, x, n, /*in_memory=*/false);
    for (int k = 0; k < pr.n_ops; ++k) {
      const bool written = pr.written[k] || (k == kGrad && amp.unscale);
      if (written && data[k] != nullptr && dtype[k] != native) {
        store_block<T>(dtype[k], data[k], off, buf[k], n);
      }
    }
  }
}

// Calls run(first, last) over the work items [0, n_items) of `total` elements: on one
// thread for small steps, else split between torch's threads (at::parallel_for).
template <class Run>
void run_items(int64_t n_items, int64_t total, const Run& run) {
#if AT_PARALLEL_OPENMP && !defined(_OPENMP)
  run(0, n_items);  // torch uses OpenMP but this compiler has none: stay on one thread
#else
  if (total < kSerialBelow || n_items < 2) {
    run(0, n_items);
  } else {
    at::parallel_for(0, n_items, 1, run);
  }
#endif
}

// Runs `op` over every tensor of a prepared step, then finishes it (commit, copies back).
template <class Op>
void run_prepared(const Op& op, Prepared& pr, const Amp& amp) {
  struct Item {
    int64_t tensor, begin, end;
  };
  std::vector<Item> items;
  int64_t total = 0;
  for (int64_t i = 0; i < static_cast<int64_t>(pr.numel.size()); ++i) {
    const int64_t n = pr.numel[i];
    for (int64_t b = 0; b < n; b += kChunk) items.push_back({i, b, std::min(n, b + kChunk)});
    total += n;
  }
  auto run = [&](int64_t first, int64_t last) {
    for (int64_t it = first; it < last; ++it) {
      const Item& item = items[it];
      if (pr.is_double[item.tensor]) {
        run_range<double>(op, pr, amp, item.tensor, item.begin, item.end);
      } else {
        run_range<float>(op, pr, amp, item.tensor, item.begin, item.end);
      }
      if (item.begin == 0) commit(pr, item.tensor);
    }
  };
  run_items(static_cast<int64_t>(items.size()), total, run);
  finish(pr);
}

}  // namespace detail

// The step protocol (see the header comment): `steps` holds one step counter per param;
// `scalars` (the host's callback; may be empty when `n_columns` is 0) returns `n_columns`
// columns of step-dependent scalars, and `make_op(columns)` builds the kernel from them.
template <class MakeOp>
void fused_step(const char* name, const std::vector<Operand>& ops, const TensorList& steps,
                const StepScalars& scalars, size_t n_columns, const Amp& amp, const MakeOp& make_op) {
  if (amp.skip) return;
  detail::Prepared pr = detail::prepare(ops, amp, name, &steps);
  const size_t n = pr.numel.size();
  std::vector<Scalars> columns(n_columns, Scalars(1, 0.0));
  if (scalars && n > 0) {
    columns = scalars(pr.counters.next());
    TORCH_CHECK(columns.size() == n_columns, name, ": expected ", n_columns, " columns of step scalars, got ",
                columns.size());
    for (const Scalars& c : columns) {
      TORCH_CHECK(c.size() == n || c.size() == 1, name, ": expected one step scalar per tensor (", n,
                  ") or one for all, got ", c.size());
    }
  } else {
    TORCH_CHECK(n_columns == 0 || n == 0, name, ": no step scalars callback");
  }
  const std::vector<Scalars>& cols = columns;
  detail::run_prepared(make_op(cols), pr, amp);
}

// The step protocol for a kernel that takes no step scalars: the counters advance (`scalars`,
// if given, returns no columns: it sees the next step values).
template <class Op>
void fused_step(const char* name, const Op& op, const std::vector<Operand>& ops, const TensorList& steps,
                const Amp& amp, const StepScalars& scalars = StepScalars()) {
  fused_step(name, ops, steps, scalars, 0, amp, [&](const std::vector<Scalars>&) -> const Op& { return op; });
}

// Runs `op` over every tensor of the operand lists (see the header comment): no step counters.
template <class Op>
void fused_apply(const char* name, const Op& op, const std::vector<Operand>& ops, const Amp& amp) {
  if (amp.skip) return;
  detail::Prepared pr = detail::prepare(ops, amp, name);
  detail::run_prepared(op, pr, amp);
}

}  // namespace optimlab
