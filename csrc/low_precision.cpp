// The low-precision write-back of optimlab/low_precision.py, fused: float32 working copies
// written into bfloat16/float16 params, rounded to nearest, with Kahan compensation, or
// stochastically (bfloat16). Bit for bit the torch reference there (kahan_write,
// stochastic_round, copy_), which stays the definition; this is one pass over memory instead
// of the reference's ~300 int64 torch ops per chunk for the stochastic write.
#include <ATen/Functions.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels.h"

namespace optimlab {
namespace {

constexpr int64_t kLpChunk = 1 << 14;        // elements per parallel work item
constexpr int64_t kLpSerialBelow = 1 << 15;  // fewer elements in total: stay on one thread
constexpr int64_t kLpBlock = 256;            // elements of one Philox block (vectorizable loop)

inline uint32_t bits_of(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

inline float float_of_bf16(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// What torch's own float -> bfloat16 conversion of a contiguous tensor (its vectorized copy
// kernel, the one the reference's copy_ / .to() take) gives a NaN: 0xFFFF with AVX2/AVX-512,
// 0x7FC0 with the DEFAULT capability (c10's scalar conversion), whatever the sign or payload.
// It depends on torch's runtime capability (ATEN_CPU_CAPABILITY), not on this build's
// instruction set, so it is asked of torch once instead of assumed.
uint16_t torch_bf16_nan() {
  static const uint16_t bits = [] {
    at::Tensor nan = at::full({64}, NAN, at::TensorOptions().dtype(at::kFloat));
    return static_cast<uint16_t>(nan.to(at::kBFloat16).view(at::kShort).data_ptr<int16_t>()[0]);
  }();
  return bits;
}

// float -> bfloat16 rounded to nearest-even by bit ops (torch's conversion; NaN: see above).
inline uint16_t bf16_rn(float x, uint16_t nan_bits) {
  if (std::isnan(x)) return nan_bits;
  uint32_t u = bits_of(x);
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// Philox4x32-10's first output word, exactly Triton's tl.philox (and low_precision.philox):
// key = (low, high) 32 bits of seed; counters c0..c3.
inline uint32_t philox_first(uint32_t k0, uint32_t k1, uint32_t c0, uint32_t c1, uint32_t c2,
                             uint32_t c3) {
  for (int r = 0; r < 10; ++r) {
    uint64_t pb = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    uint64_t pa = static_cast<uint64_t>(0xD2511F53u) * c0;
    uint32_t n0 = static_cast<uint32_t>(pb >> 32) ^ c1 ^ k0;
    uint32_t n2 = static_cast<uint32_t>(pa >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(pb);
    c3 = static_cast<uint32_t>(pa);
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c0;
}

struct Item {
  int64_t tensor, start, end;
};

// Elements [a, b) of tensor i (in memory order: the operands share one dense layout).
void write_range(int mode, bool half, uint16_t nan_bits, void* pp, const float* w, void* cp,
                 uint64_t seed, uint64_t step, int64_t index_base, int64_t a, int64_t b) {
  if (mode == kLpStochastic) {  // bfloat16 only (checked)
    uint16_t* p = static_cast<uint16_t*>(pp);
    const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    const uint32_t s0 = static_cast<uint32_t>(step), s1 = static_cast<uint32_t>(step >> 32);
    uint32_t r[kLpBlock];
    for (int64_t j0 = a; j0 < b; j0 += kLpBlock) {
      const int64_t m = std::min(kLpBlock, b - j0);
      for (int64_t j = 0; j < m; ++j) {  // (no branches: the compiler vectorizes the rounds)
        const uint64_t idx = static_cast<uint64_t>(index_base + j0 + j);
        r[j] = philox_first(k0, k1, static_cast<uint32_t>(idx), static_cast<uint32_t>(idx >> 32), s0, s1);
      }
      for (int64_t j = 0; j < m; ++j) {
        const float x = w[j0 + j];
        p[j0 + j] = std::isnan(x) ? nan_bits
                                  : static_cast<uint16_t>((bits_of(x) + (r[j] & 0xFFFFu)) >> 16);
      }
    }
    return;
  }
  if (half) {
    c10::Half* p = static_cast<c10::Half*>(pp);
    c10::Half* c = static_cast<c10::Half*>(cp);
    for (int64_t j = a; j < b; ++j) {
      if (mode == kLpKahan) {  // each operation in float32, in the reference's order
        const float p32 = static_cast<float>(p[j]);
        const float y = static_cast<float>(c[j]) + (w[j] - p32);
        const c10::Half t(p32 + y);
        c[j] = c10::Half(y - (static_cast<float>(t) - p32));
        p[j] = t;
      } else {
        p[j] = c10::Half(w[j]);
      }
    }
    return;
  }
  uint16_t* p = static_cast<uint16_t*>(pp);
  uint16_t* c = static_cast<uint16_t*>(cp);
  for (int64_t j = a; j < b; ++j) {
    if (mode == kLpKahan) {
      const float p32 = float_of_bf16(p[j]);
      const float y = float_of_bf16(c[j]) + (w[j] - p32);
      const uint16_t t = bf16_rn(p32 + y, nan_bits);
      c[j] = bf16_rn(y - (float_of_bf16(t) - p32), nan_bits);
      p[j] = t;
    } else {
      p[j] = bf16_rn(w[j], nan_bits);
    }
  }
}

bool same_layout(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() && a.strides() == b.strides();
}

}  // namespace

void lp_write(const TensorList& params, const TensorList& works, const TensorList& comps, int64_t mode,
              const std::vector<uint64_t>& seeds, const std::vector<uint64_t>& steps,
              const std::vector<int64_t>& index_base) {
  const size_t n = params.size();
  TORCH_CHECK(mode == kLpNearest || mode == kLpKahan || mode == kLpStochastic,
              "lp_write: mode must be 0 (nearest), 1 (kahan) or 2 (stochastic), got ", mode);
  TORCH_CHECK(works.size() == n, "lp_write: expected one working copy per param (", n, "), got ",
              works.size());
  TORCH_CHECK(mode != kLpKahan || comps.size() == n, "lp_write: kahan needs one compensation per param (",
              n, "), got ", comps.size());
  if (mode == kLpStochastic) {
    TORCH_CHECK(seeds.size() == n && steps.size() == n && index_base.size() == n,
                "lp_write: stochastic rounding needs one seed, step and index base per param (", n,
                "), got ", seeds.size(), ", ", steps.size(), ", ", index_base.size());
  }
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor &p = params[i], &w = works[i];
    TORCH_CHECK(p.device().is_cpu() && w.device().is_cpu(), "lp_write: param ", i, " and its working copy must be CPU tensors");
    TORCH_CHECK(p.scalar_type() == at::kBFloat16 || (p.scalar_type() == at::kHalf && mode != kLpStochastic),
                "lp_write: param ", i, " is ", p.scalar_type(),
                mode == kLpStochastic ? " (stochastic rounding: bfloat16 only)" : " (bfloat16 or float16 only)");
    TORCH_CHECK(w.scalar_type() == at::kFloat, "lp_write: working copy ", i, " is ", w.scalar_type(), ", not float32");
    TORCH_CHECK(p.dim() > 0, "lp_write: param ", i, " is 0-dim (torch converts those another way: use the torch path)");
    // stochastic: an element's random bits come from its row-major index, so row-major memory
    TORCH_CHECK(mode == kLpStochastic ? p.is_contiguous() && w.is_contiguous()
                                      : p.is_non_overlapping_and_dense() && same_layout(p, w),
                "lp_write: param ", i, " and its working copy must be ",
                mode == kLpStochastic ? "contiguous" : "dense with the same shape and strides",
                " (got sizes ", p.sizes(), " / ", w.sizes(), ", strides ", p.strides(), " / ", w.strides(), ")");
    TORCH_CHECK(p.sizes() == w.sizes(), "lp_write: param ", i, " has shape ", p.sizes(), ", its working copy ", w.sizes());
    if (mode == kLpKahan) {
      const at::Tensor& c = comps[i];
      TORCH_CHECK(c.device().is_cpu() && c.scalar_type() == p.scalar_type() && same_layout(p, c),
                  "lp_write: compensation ", i, " must be a CPU ", p.scalar_type(),
                  " tensor of the param's shape and strides");
    }
  }
  const uint16_t nan_bits = torch_bf16_nan();
  std::vector<Item> items;
  int64_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    const int64_t numel = params[i].numel();
    total += numel;
    for (int64_t a = 0; a < numel; a += kLpChunk) {
      items.push_back({static_cast<int64_t>(i), a, std::min(a + kLpChunk, numel)});
    }
  }
  auto run = [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const Item& it = items[k];
      const int64_t i = it.tensor;
      const at::Tensor& p = params[i];
      write_range(static_cast<int>(mode), p.scalar_type() == at::kHalf, nan_bits, p.data_ptr(),
                  works[i].data_ptr<float>(), mode == kLpKahan ? comps[i].data_ptr() : nullptr,
                  mode == kLpStochastic ? seeds[i] : 0, mode == kLpStochastic ? steps[i] : 0,
                  mode == kLpStochastic ? index_base[i] : 0, it.start, it.end);
    }
  };
  const int64_t n_items = static_cast<int64_t>(items.size());
  if (total < kLpSerialBelow) {
    run(0, n_items);
  } else {
    at::parallel_for(0, n_items, 1, run);
  }
  // As torch's in-place writes do, so autograd notices a param changed after being saved.
  for (size_t i = 0; i < n; ++i) {
    if (!params[i].is_inference()) params[i].unsafeGetTensorImpl()->bump_version();
    if (mode == kLpKahan && !comps[i].is_inference()) comps[i].unsafeGetTensorImpl()->bump_version();
  }
}

}  // namespace optimlab
