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
//     unscaled (as torch's _fused_adam_ does), and the update uses them.
#pragma once

#include <ATen/Config.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <array>
#include <optional>
#include <type_traits>
#include <vector>

#include "optim_math.h"

namespace optimlab {

using TensorList = std::vector<at::Tensor>;

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
inline void prefetch_ahead(const TensorList& tensors, size_t i) {
  constexpr size_t kImplAhead = 8, kStorageAhead = 4;
  auto lines = [](const void* p, int n) {
    for (int l = 0; l < n; ++l) __builtin_prefetch(static_cast<const char*>(p) + 64 * l);
  };
  if (i + kImplAhead < tensors.size()) lines(tensors[i + kImplAhead].unsafeGetTensorImpl(), 4);
  if (i + kStorageAhead < tensors.size()) {
    const at::Tensor& t = tensors[i + kStorageAhead];  // (its TensorImpl was prefetched before)
    if (t.has_storage()) lines(t.storage().unsafeGetStorageImpl(), 2);
  }
}

namespace detail {

struct Prepared {
  int n_ops = 0;
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

// Validates the operands and resolves each tensor's memory (see the header comment).
Prepared prepare(const std::vector<Operand>& ops, const Amp& amp, const char* name);

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

}  // namespace detail

// Runs `op` over every tensor of the operand lists (see the header comment).
template <class Op>
void fused_apply(const char* name, const Op& op, const std::vector<Operand>& ops, const Amp& amp) {
  if (amp.skip) return;
  detail::Prepared pr = detail::prepare(ops, amp, name);
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
        detail::run_range<double>(op, pr, amp, item.tensor, item.begin, item.end);
      } else {
        detail::run_range<float>(op, pr, amp, item.tensor, item.begin, item.end);
      }
      if (item.begin == 0) detail::bump_versions(pr, item.tensor);
    }
  };
  detail::run_items(static_cast<int64_t>(items.size()), total, run);
  detail::finish(pr);
}

}  // namespace optimlab
