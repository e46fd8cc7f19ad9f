// Adafactor (torch.optim.Adafactor's algorithm) for a whole param group.
//
// A param of 2+ dims is a batch of B matrices of R x C (its last two dims) whose second
// moment is factored into row_var (B x R) and col_var (B x C); a param of 0 or 1 dim
// keeps the full variance. Two reductions over whole tensors come before a param can
// change (the row/column statistics, then RMS(U) for the clipping), so each param takes
// four passes, run in parallel over all the params of a "wave":
//   A. one read of g and p: every matrix's row and column sums of g^2 (rows are split
//      between threads, column sums go to per-thread accumulators; matrices of fewer than
//      kNarrow columns go in blocks of elements across rows and matrices) and sum(p^2)
//      (alpha's RMS(p)); 0/1-dim params also variance = lerp(variance, g^2, w), U (kept in the
//      workspace) and sum(U^2). AMP: g is unscaled here, in place, as torch's fused
//      optimizers leave it;
//   B. O(R + C) per matrix, over runs of matrices: row_var, col_var = lerp(.., mean(g^2), w),
//      and the factors of rsqrt(V) below;
//   C. every matrix's sum(U^2) (a read of g);
//   then the host (a Python callback) turns the norms into each param's coefficient
//   -alpha / max(1, RMS(U) / d), with optimlab.adafactor's scalar functions;
//   D. p = p * (1 - lr * wd) + coefficient * U (U recomputed from g for matrices).
// A wave is a run of consecutive params of at most kWave elements (or one larger param),
// so that C and D find g, p and U still in cache, and one workspace, reused from wave to
// wave, holds the sums, factors and U of any wave (allocated once per step, at a size that
// recurs: the allocator keeps it instead of mapping fresh pages).
//
// U = g * rsqrt(max(V, eps1^2)) with V = row_var @ col_var / max(mean(row_var), eps1).
// torch rounds V per element, then takes a square root and divides twice per element; here
// rsqrt(V) = rsqrt(row_var / mean) * rsqrt(col_var), clamped at rsqrt(eps1^2), with the
// factors computed once per row and column, so C and D only multiply (a square root and
// two divisions per element would make them compute bound): a few ulps from torch's
// rounding, and NaN/inf propagate as in torch. Everything else rounds as torch's ops do,
// except the sums of squares: in T over at most a block (kBlock elements, kFlushRows rows),
// then in double (torch's norms accumulate in the param's dtype).
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <tuple>

#include "kernels.h"

namespace optimlab {
namespace {

constexpr int kP = 0, kG = 1, kRow = 2, kCol = 3, kVar = 4, kOperands = 5;
constexpr int64_t kWave = 1 << 15;  // elements per wave of params (a few arrays of it fit in L2)
constexpr int64_t kFlushRows = 16;  // rows of column sums accumulated in T, then added in double
constexpr int64_t kNarrow = 16;     // fewer columns: blocks of elements across rows and matrices

// doubles of workspace that n elements of `bytes` bytes take, rounded up to 64 bytes
constexpr int64_t doubles(int64_t n, int64_t bytes) { return (n * bytes + 63) / 64 * 8; }

struct Param {
  std::array<void*, kOperands> data{};  // contiguous memory (of a copy if the tensor is not)
  std::array<at::ScalarType, kOperands> dtype{};
  bool factored = false, is_double = false;
  bool whole = false;  // factored: each item holds whole matrices (R * C <= kChunk)
  int64_t numel = 0, batches = 0, rows = 1, cols = 1;  // factored: B matrices of R x C
  double weight = 0;                     // the lerp weight one_minus_beta2_t
  int64_t first_item = 0, end_item = 0;  // its items in A, C and D
  int64_t work = 0;                      // where its part of the wave's workspace starts (doubles)
  double* row_sums = nullptr;            // A: sums of g^2 per row (B * R)
  double* col_sums = nullptr;            //    and per column (B * C)
  void* row_factor = nullptr;            // B: rsqrt(row_var / mean), in T
  void* col_factor = nullptr;            //    rsqrt(col_var)
  void* update = nullptr;                // 0/1-dim params: U, in T

  // the doubles of workspace it takes
  int64_t work_size() const {
    const int64_t t = is_double ? 8 : 4;
    return factored ? doubles(batches * rows, 8) + doubles(batches * cols, 8) + doubles(batches * rows, t) +
                          doubles(batches * cols, t)
                    : doubles(numel, t);
  }

  // points its parts at its place in the workspace
  void place(double* base) {
    if (!factored) {
      update = base;
      return;
    }
    row_sums = base;
    col_sums = row_sums + doubles(batches * rows, 8);
    row_factor = col_sums + doubles(batches * cols, 8);
    col_factor = static_cast<double*>(row_factor) + doubles(batches * rows, is_double ? 8 : 4);
  }
};

struct Item {
  int64_t param, begin, end;  // rows (matrices) or elements (0/1-dim); in B, matrices
};

// Where element e of a matrix param is, kept up to date element by element (no division):
// its row (of all B * R) and its column's index in col_var (of all B * C).
struct Cursor {
  int64_t row, col, r, c;
  Cursor(const Param& x, int64_t e)
      : row(e / x.cols), col((e / x.cols / x.rows) * x.cols + e % x.cols), r(row % x.rows), c(e % x.cols) {}
  void next(const Param& x) {
    ++col;
    if (++c < x.cols) return;
    c = 0, col -= x.cols, ++row;
    if (++r < x.rows) return;
    r = 0, col += x.cols;
  }
};

// A run of consecutive params stepped together: [first, end) of each list.
struct Wave {
  int64_t first_param = 0, end_param = 0, first_item = 0, end_item = 0;
  int64_t first_factored = 0, end_factored = 0, first_matrix = 0, end_matrix = 0;
  int64_t total = 0;  // elements
};

// ---- blocks of an operand, in the math type T ------------------------------------------------
template <class T>
T* load(const Param& x, int k, int64_t off, int64_t n, T* buf) {
  if (x.dtype[k] == detail::scalar_type_of<T>()) return static_cast<T*>(x.data[k]) + off;
  detail::load_block<T>(x.dtype[k], x.data[k], off, buf, n);
  return buf;
}

// Writes back a block load() converted; v is then rounded as the tensor holds it.
template <class T>
void store(const Param& x, int k, int64_t off, int64_t n, T* v) {
  if (x.dtype[k] == detail::scalar_type_of<T>()) return;  // v is the tensor's memory
  detail::store_block<T>(x.dtype[k], x.data[k], off, v, n);
  detail::load_block<T>(x.dtype[k], x.data[k], off, v, n);
}

// v rounded as a torch op whose output has dtype st rounds it
template <class T>
T round_as(at::ScalarType st, T v) {
  switch (st) {
    case at::kBFloat16: return static_cast<T>(static_cast<float>(c10::BFloat16(static_cast<float>(v))));
    case at::kHalf: return static_cast<T>(static_cast<float>(c10::Half(static_cast<float>(v))));
    case at::kFloat: return static_cast<T>(static_cast<float>(v));
    default: return v;
  }
}

template <class T>
double sum_lanes(const math::Vec<T>& acc) {
  alignas(64) T lanes[math::Vec<T>::size()];
  acc.store(lanes);
  double s = 0;
  for (T v : lanes) s += v;
  return s;
}

// sum(x^2) of a block (at most kBlock elements: accumulated in T, returned in double); with
// col, also col[k] += x[k]^2. (Four accumulators: independent additions.)
template <class T>
C10_ALWAYS_INLINE double block_sum_squares(const T* x, int64_t n, T* col = nullptr) {
  using V = math::Vec<T>;
  constexpr int64_t W = V::size();
  V acc[4] = {V(T(0)), V(T(0)), V(T(0)), V(T(0))};
  auto sum = [&](auto with_col) {
    auto add = [&](int a, int64_t j, int64_t c) {
      const V v = math::ld(x + j, c);
      const V sq = v * v;
      acc[a] = acc[a] + sq;
      if constexpr (decltype(with_col)::value) math::st(math::ld(col + j, c) + sq, col + j, c);
    };
    int64_t j = 0;
    for (; j + 4 * W <= n; j += 4 * W) {
      for (int a = 0; a < 4; ++a) add(a, j + a * W, W);
    }
    for (; j < n; j += W) add(0, j, std::min(W, n - j));
  };
  if (col != nullptr) {
    sum(std::true_type());
  } else {
    sum(std::false_type());
  }
  return sum_lanes((acc[0] + acc[1]) + (acc[2] + acc[3]));
}

// ---- the update U ----------------------------------------------------------------------------
// matrices: min(rsqrt(row_var / mean) * rsqrt(col_var), rsqrt(eps1^2)) * g
template <class T>
C10_ALWAYS_INLINE math::Vec<T> factored_update(const math::Vec<T>& g, const math::Vec<T>& row,
                                               const math::Vec<T>& col, const math::Vec<T>& cap,
                                               bool maximize) {
  return at::vec::minimum(row * col, cap) * math::signed_grad(g, maximize);
}

// 0/1-dim params: variance.clone().clamp_(min=eps1^2).rsqrt_().mul_(g), as torch
template <class T>
C10_ALWAYS_INLINE math::Vec<T> full_update(const math::Vec<T>& g, const math::Vec<T>& v,
                                           const math::Vec<T>& eps_sq, bool maximize) {
  return at::vec::maximum(v, eps_sq).rsqrt() * math::signed_grad(g, maximize);
}

// Calls f(T()) with T the math type of a param: double for fp64, float otherwise.
template <class F>
void with_math_type(const Param& x, const F& f) {
  if (x.is_double) {
    f(double());
  } else {
    f(float());
  }
}

class Step {
 public:
  Step(std::vector<Param>& ps, double eps1, double decay_factor, bool decay, bool maximize, const Amp& amp)
      : ps_(ps), eps1_(eps1), decay_factor_(decay_factor), decay_(decay), maximize_(maximize), amp_(amp) {}

  std::vector<Item> items;        // A, C, D: every param's rows / elements, param by param
  std::vector<Item> matrices;     // B: batches of matrices
  std::vector<int64_t> factored;  // C: the items of matrices
  std::vector<Wave> waves;
  std::vector<double> workspace;  // the wave's sums, factors and U (see the header comment)

  void allocate(int64_t size) {
    workspace.resize(size);
    p_sq_.assign(items.size(), 0.0);
    u_sq_.assign(items.size(), 0.0);
  }

  // A: the statistics; the squared norm of each param of the wave.
  std::vector<double> stats(const Wave& w) {
    for (int64_t i = w.first_param; i < w.end_param; ++i) {
      Param& x = ps_[i];
      x.place(workspace.data() + x.work);
      if (x.factored) std::fill(x.row_sums, x.col_sums + x.batches * x.cols, 0.0);
    }
    run(w.first_item, w.end_item, w.total, [&](int64_t first, int64_t last) {
      Columns acc;
      for (int64_t it = first; it < last; ++it) {
        with_math_type(ps_[items[it].param], [&](auto tag) {
          using T = decltype(tag);
          const Param& x = ps_[items[it].param];
          if (x.factored && x.whole && x.cols < kNarrow) {
            stats_narrow<T>(it);
          } else if (x.factored) {
            stats_rows<T>(it, acc);
          } else {
            stats_elements<T>(it);
          }
        });
      }
      flush(acc);
    });
    // column sums of matrices split between threads, added in row order
    std::sort(shared_.begin(), shared_.end(), [](const Columns& a, const Columns& b) {
      return std::tie(a.param, a.batch, a.first_row) < std::tie(b.param, b.batch, b.first_row);
    });
    for (const Columns& part : shared_) {
      double* col = ps_[part.param].col_sums + part.batch * ps_[part.param].cols;
      for (size_t c = 0; c < part.sums.size(); ++c) col[c] += part.sums[c];
    }
    shared_.clear();
    return per_param(w, p_sq_);
  }

  // B, then C; the squared norm of each update of the wave.
  std::vector<double> update_norms(const Wave& w) {
    run(w.first_matrix, w.end_matrix, w.total, [&](int64_t first, int64_t last) {
      for (int64_t it = first; it < last; ++it) {
        const Item& item = matrices[it];
        with_math_type(ps_[item.param], [&](auto tag) {
          factors<decltype(tag)>(ps_[item.param], item.begin, item.end);
        });
      }
    });
    run(w.first_factored, w.end_factored, w.total, [&](int64_t first, int64_t last) {
      for (int64_t k = first; k < last; ++k) {
        with_math_type(ps_[items[factored[k]].param], [&](auto tag) {
          update_rows<decltype(tag)>(factored[k], nullptr);
        });
      }
    });
    return per_param(w, u_sq_);
  }

  // D, with coefficients[i] the coefficient of the wave's i-th param
  void apply(const Wave& w, const std::vector<double>& coefficients) {
    run(w.first_item, w.end_item, w.total, [&](int64_t first, int64_t last) {
      for (int64_t it = first; it < last; ++it) {
        const double s = coefficients[items[it].param - w.first_param];
        with_math_type(ps_[items[it].param], [&](auto tag) {
          using T = decltype(tag);
          if (ps_[items[it].param].factored) {
            update_rows<T>(it, &s);
          } else {
            update_elements<T>(it, s);
          }
        });
      }
    });
  }

 private:
  // Column sums of one matrix of the batch, gathered by one thread over consecutive rows.
  struct Columns {
    int64_t param = -1, batch = -1, first_row = 0, rows = 0;
    std::vector<double> sums;
    std::vector<float> part_f;  // the last rows' sums, in T
    std::vector<double> part_d;

    template <class T>
    T* part() {
      if constexpr (std::is_same_v<T, double>) {
        return part_d.data();
      } else {
        return part_f.data();
      }
    }
  };

  std::vector<Param>& ps_;
  const double eps1_, decay_factor_;
  const bool decay_, maximize_;
  const Amp amp_;
  std::vector<double> p_sq_, u_sq_;  // per item: sum(p^2), sum(U^2)
  std::mutex mutex_;
  std::vector<Columns> shared_;  // matrices split between threads

  template <class F>
  static void run(int64_t first, int64_t end, int64_t total, const F& f) {
    detail::run_items(end - first, total, [&](int64_t a, int64_t b) { f(first + a, first + b); });
  }

  std::vector<double> per_param(const Wave& w, const std::vector<double>& per_item) const {
    std::vector<double> out(w.end_param - w.first_param, 0.0);
    for (int64_t i = w.first_param; i < w.end_param; ++i) {
      for (int64_t it = ps_[i].first_item; it < ps_[i].end_item; ++it) out[i - w.first_param] += per_item[it];
    }
    return out;
  }

  template <class T>
  void add_part(Columns& acc) const {
    T* part = acc.part<T>();
    for (size_t c = 0; c < acc.sums.size(); ++c) acc.sums[c] += part[c];
    std::fill(part, part + acc.sums.size(), T(0));
  }

  void flush(Columns& acc) {
    if (acc.param < 0) return;
    Param& x = ps_[acc.param];
    with_math_type(x, [&](auto tag) { add_part<decltype(tag)>(acc); });
    if (acc.first_row == acc.batch * x.rows && acc.rows == x.rows) {  // all its rows: its own
      std::memcpy(x.col_sums + acc.batch * x.cols, acc.sums.data(), x.cols * sizeof(double));
    } else {
      std::lock_guard<std::mutex> lock(mutex_);
      shared_.push_back(acc);
    }
    acc.param = -1;
  }

  template <class T>
  void unscale(const Param& x, int64_t off, int64_t n, T* g) const {
    if (!amp_.unscale) return;
    detail::unscale(g, n, amp_.scale);
    store(x, kG, off, n, g);
  }

  // ---- A -------------------------------------------------------------------------------------
  template <class T>
  void stats_rows(int64_t it, Columns& acc) {
    const Item& item = items[it];
    Param& x = ps_[item.param];
    const int64_t R = x.rows, C = x.cols;
    alignas(64) T gbuf[kBlock], pbuf[kBlock];
    double p_sq = 0;
    for (int64_t q = item.begin; q < item.end; ++q) {
      const int64_t b = q / R;
      if (acc.param != item.param || acc.batch != b) {
        flush(acc);
        acc.param = item.param, acc.batch = b, acc.first_row = q, acc.rows = 0;
        acc.sums.assign(C, 0.0);
        acc.part_f.assign(std::is_same_v<T, float> ? C : 0, 0.0f);
        acc.part_d.assign(std::is_same_v<T, double> ? C : 0, 0.0);
      }
      T* part = acc.part<T>();
      double row = 0;
      for (int64_t c0 = 0; c0 < C; c0 += kBlock) {
        const int64_t n = std::min(kBlock, C - c0), off = q * C + c0;
        T* g = load(x, kG, off, n, gbuf);
        unscale(x, off, n, g);
        row += block_sum_squares(g, n, part + c0);
        p_sq += block_sum_squares(load(x, kP, off, n, pbuf), n);
      }
      x.row_sums[q] = row;
      if (++acc.rows % kFlushRows == 0) add_part<T>(acc);
    }
    p_sq_[it] = p_sq;
  }

  // A for matrices of fewer than kNarrow columns, whole in the item: blocks of elements
  // across rows and matrices, the sums added element by element.
  template <class T>
  void stats_narrow(int64_t it) {
    const Item& item = items[it];
    Param& x = ps_[item.param];
    alignas(64) T gbuf[kBlock], pbuf[kBlock], sq[kBlock];
    double p_sq = 0;
    Cursor at(x, item.begin * x.cols);
    for (int64_t off = item.begin * x.cols; off < item.end * x.cols; off += kBlock) {
      const int64_t n = std::min(kBlock, item.end * x.cols - off);
      T* g = load(x, kG, off, n, gbuf);
      unscale(x, off, n, g);
      p_sq += block_sum_squares(load(x, kP, off, n, pbuf), n);
      math::for_each_vector<T>(n, [&](int64_t j, int64_t c) {
        const math::Vec<T> v = math::ld(g + j, c);
        math::st(v * v, sq + j, c);
      });
      for (int64_t k = 0; k < n; ++k, at.next(x)) {
        x.row_sums[at.row] += sq[k];
        x.col_sums[at.col] += sq[k];
      }
    }
    p_sq_[it] = p_sq;
  }

  template <class T>
  void stats_elements(int64_t it) {
    using V = math::Vec<T>;
    const Item& item = items[it];
    const Param& x = ps_[item.param];
    const T w = static_cast<T>(x.weight);
    const V eps_sq = math::splat<T>(eps1_ * eps1_);
    T* update = static_cast<T*>(x.update);
    alignas(64) T gbuf[kBlock], pbuf[kBlock], vbuf[kBlock];
    double p_sq = 0, u_sq = 0;
    for (int64_t off = item.begin; off < item.end; off += kBlock) {
      const int64_t n = std::min(kBlock, item.end - off);
      T* g = load(x, kG, off, n, gbuf);
      unscale(x, off, n, g);
      p_sq += block_sum_squares(load(x, kP, off, n, pbuf), n);
      T* v = load(x, kVar, off, n, vbuf);
      math::for_each_vector<T>(n, [&](int64_t j, int64_t c) {
        const V gv = math::ld(g + j, c);
        math::st(math::lerp(math::ld(v + j, c), gv * gv, w), v + j, c);
      });
      store(x, kVar, off, n, v);
      T* u = update + off;
      math::for_each_vector<T>(n, [&](int64_t j, int64_t c) {
        math::st(full_update(math::ld(g + j, c), math::ld(v + j, c), eps_sq, maximize_), u + j, c);
      });
      u_sq += block_sum_squares(u, n);
    }
    p_sq_[it] = p_sq;
    u_sq_[it] = u_sq;
  }

  // ---- B -------------------------------------------------------------------------------------
  // var.lerp_(torch.norm(g, dim).square_().div_(size), w) for n entries of row_var or
  // col_var (k) from their sums of g^2, rounded in g's dtype as torch's ops; out: the result.
  template <class T>
  void lerp_mean_squares(const Param& x, int k, const double* sums, int64_t off, int64_t n,
                         int64_t size, T* out) const {
    const at::ScalarType st = x.dtype[kG];
    const T w = static_cast<T>(x.weight);
    alignas(64) T ms[kBlock], buf[kBlock];
    for (int64_t j0 = 0; j0 < n; j0 += kBlock) {
      const int64_t m = std::min(kBlock, n - j0);
      for (int64_t j = 0; j < m; ++j) ms[j] = static_cast<T>(sums[j0 + j]);  // torch's norm: sum in T
      if (st == detail::scalar_type_of<T>()) {
        const math::Vec<T> div(static_cast<T>(size));
        math::for_each_vector<T>(m, [&](int64_t j, int64_t c) {
          const math::Vec<T> norm = math::ld(ms + j, c).sqrt();
          math::st((norm * norm) / div, ms + j, c);
        });
      } else {  // rounded to bf16/fp16 after each op
        for (int64_t j = 0; j < m; ++j) {
          const T norm = round_as(st, std::sqrt(ms[j]));
          ms[j] = round_as(st, round_as(st, norm * norm) / static_cast<T>(size));
        }
      }
      T* var = load(x, k, off + j0, m, buf);
      math::for_each_vector<T>(m, [&](int64_t j, int64_t c) {
        math::st(math::lerp(math::ld(var + j, c), math::ld(ms + j, c), w), var + j, c);
      });
      store(x, k, off + j0, m, var);
      std::copy(var, var + m, out + j0);
    }
  }

  // matrices [b0, b1): row_var, col_var, then rsqrt(row_var / mean) and rsqrt(col_var)
  template <class T>
  void factors(const Param& x, int64_t b0, int64_t b1) const {
    const int64_t R = x.rows, C = x.cols;
    T* ra = static_cast<T*>(x.row_factor);
    T* rc = static_cast<T*>(x.col_factor);
    lerp_mean_squares<T>(x, kRow, x.row_sums + b0 * R, b0 * R, (b1 - b0) * R, C, ra + b0 * R);
    lerp_mean_squares<T>(x, kCol, x.col_sums + b0 * C, b0 * C, (b1 - b0) * C, R, rc + b0 * C);
    // ra = row_var / row_var.mean(dim=-2).clamp_(min=eps1), the mean in row_var's dtype (NaN stays NaN)
    if (R == 1 && x.dtype[kRow] == detail::scalar_type_of<T>()) {  // one row: its own mean
      const math::Vec<T> eps = math::splat<T>(eps1_);
      math::for_each_vector<T>(b1 - b0, [&](int64_t j, int64_t c) {
        const math::Vec<T> v = math::ld(ra + b0 + j, c);
        math::st(v / at::vec::maximum(v, eps), ra + b0 + j, c);
      });
    } else {
      for (int64_t b = b0; b < b1; ++b) {
        double total = 0;
        for (int64_t r = b * R; r < (b + 1) * R; ++r) total += ra[r];
        T mean = round_as(x.dtype[kRow], static_cast<T>(total / R));
        if (!std::isnan(mean)) mean = round_as(x.dtype[kRow], std::max(mean, static_cast<T>(eps1_)));
        for (int64_t r = b * R; r < (b + 1) * R; ++r) ra[r] /= mean;
      }
    }
    rsqrt(ra + b0 * R, (b1 - b0) * R);
    rsqrt(rc + b0 * C, (b1 - b0) * C);
  }

  template <class T>
  static void rsqrt(T* x, int64_t n) {  // 1 / sqrt(x), as torch's rsqrt_
    math::for_each_vector<T>(n, [&](int64_t j, int64_t c) { math::st(math::ld(x + j, c).rsqrt(), x + j, c); });
  }

  // ---- C (coefficient == nullptr: sum(U^2)) and D (the update) -------------------------------
  template <class T>
  void update_rows(int64_t it, const double* coefficient) {
    using V = math::Vec<T>;
    const Item& item = items[it];
    const Param& x = ps_[item.param];
    const int64_t R = x.rows, C = x.cols;
    const V cap = math::splat<T>(T(1) / std::sqrt(static_cast<T>(eps1_ * eps1_)));
    const T* row_factor = static_cast<const T*>(x.row_factor);
    const T* col_factor = static_cast<const T*>(x.col_factor);
    alignas(64) T gbuf[kBlock];
    double u_sq = 0;
    if (C < kNarrow) {  // blocks of elements across rows: each element's factors gathered
      alignas(64) T ra[kBlock], rc[kBlock];
      Cursor at(x, item.begin * C);
      for (int64_t off = item.begin * C; off < item.end * C; off += kBlock) {
        const int64_t n = std::min(kBlock, item.end * C - off);
        for (int64_t k = 0; k < n; ++k, at.next(x)) ra[k] = row_factor[at.row], rc[k] = col_factor[at.col];
        const T* g = load(x, kG, off, n, gbuf);
        u_sq += update_block<T>(x, off, n, coefficient, [&](int64_t j, int64_t c) {
          return factored_update(math::ld(g + j, c), math::ld(ra + j, c), math::ld(rc + j, c), cap, maximize_);
        });
      }
      if (coefficient == nullptr) u_sq_[it] = u_sq;
      return;
    }
    for (int64_t q = item.begin; q < item.end; ++q) {
      const V ra(row_factor[q]);
      const T* rc = col_factor + (q / R) * C;
      for (int64_t c0 = 0; c0 < C; c0 += kBlock) {
        const int64_t n = std::min(kBlock, C - c0), off = q * C + c0;
        const T* g = load(x, kG, off, n, gbuf);
        u_sq += update_block<T>(x, off, n, coefficient, [&](int64_t j, int64_t c) {
          return factored_update(math::ld(g + j, c), ra, math::ld(rc + c0 + j, c), cap, maximize_);
        });
      }
    }
    if (coefficient == nullptr) u_sq_[it] = u_sq;
  }

  template <class T>
  void update_elements(int64_t it, double coefficient) {
    const Item& item = items[it];
    const Param& x = ps_[item.param];
    const T* update = static_cast<const T*>(x.update);
    for (int64_t off = item.begin; off < item.end; off += kBlock) {
      update_block<T>(x, off, std::min(kBlock, item.end - off), &coefficient,
                      [&](int64_t j, int64_t c) { return math::ld(update + off + j, c); });
    }
  }

  // the n elements of a param at off, update(j, count) their U: in C (coefficient == nullptr)
  // returns sum(U^2); in D updates the param (apply_block)
  template <class T, class U>
  double update_block(const Param& x, int64_t off, int64_t n, const double* coefficient, const U& update) const {
    alignas(64) T buf[kBlock];
    if (coefficient == nullptr) {
      math::for_each_vector<T>(n, [&](int64_t j, int64_t c) { math::st(update(j, c), buf + j, c); });
      return block_sum_squares(buf, n);
    }
    T* p = load(x, kP, off, n, buf);
    apply_block(p, n, *coefficient, update);
    store(x, kP, off, n, p);
    return 0;
  }

  // param.mul_(1 - lr * wd) if wd != 0, then param.add_(U, alpha=coefficient)
  template <class T, class U>
  void apply_block(T* p, int64_t n, double coefficient, const U& update) const {
    using V = math::Vec<T>;
    const V decay = math::splat<T>(decay_factor_), s = math::splat<T>(coefficient);
    math::for_each_vector<T>(n, [&](int64_t j, int64_t c) {
      V pv = math::ld(p + j, c);
      if (decay_) pv = pv * decay;
      math::st(math::add_scaled(pv, update(j, c), s), p + j, c);
    });
  }
};

bool supported(at::ScalarType st) {
  return st == at::kFloat || st == at::kDouble || st == at::kBFloat16 || st == at::kHalf;
}

// sqrt(sum of squares) rounded to dtype st: what torch's Tensor.norm() returns
double norm_as(at::ScalarType st, double sum_sq) {
  const double norm = std::sqrt(sum_sq);
  return st == at::kDouble ? norm : static_cast<double>(round_as(st, static_cast<float>(norm)));
}

}  // namespace

void adafactor(const TensorList& params, const TensorList& grads, const TensorList& row_vars,
               const TensorList& col_vars, const TensorList& variances, const TensorList& state_steps,
               const StepScalars& step_scalars, double eps1, double weight_decay, double decay_factor,
               bool maximize, const AdafactorCoefficients& coefficients, const OptTensor& grad_scale,
               const OptTensor& found_inf) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n, "adafactor: expected one grad per param");
  TORCH_CHECK(step_scalars, "adafactor: no step scalars callback");
  TORCH_CHECK(coefficients, "adafactor: no coefficients callback");
  const Amp amp = read_amp(grad_scale, found_inf);
  if (amp.skip) return;
  StepCounters counters(state_steps, n, "adafactor");  // the step protocol (fused_apply.h)

  // Checks and memory: each operand contiguous (a copy written back if the tensor is not).
  std::vector<Param> ps(n);
  std::vector<std::tuple<at::Tensor, at::Tensor, bool>> copies;  // (original, contiguous copy, written)
  std::vector<c10::TensorImpl*> bump;  // (the caller's lists keep the tensors alive)
  size_t n_matrices = 0, n_vectors = 0;
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    Param& x = ps[i];
    x.factored = p.dim() > 1;
    std::array<const at::Tensor*, kOperands> ts{&p, &grads[i]};
    if (x.factored) {
      TORCH_CHECK(n_matrices < row_vars.size() && n_matrices < col_vars.size(),
                  "adafactor: expected a row_var and a col_var per param of 2 or more dims");
      ts[kRow] = &row_vars[n_matrices];
      ts[kCol] = &col_vars[n_matrices++];
    } else {
      TORCH_CHECK(n_vectors < variances.size(), "adafactor: expected a variance per param of 0 or 1 dim");
      ts[kVar] = &variances[n_vectors++];
    }
    for (int k = 0; k < kOperands; ++k) {
      if (ts[k] == nullptr) continue;
      const at::Tensor& t = *ts[k];
      TORCH_CHECK(t.defined() && t.device().is_cpu() && t.layout() == at::kStrided,
                  "adafactor: expected dense CPU tensors (operand ", k, " of param ", i, ")");
      // p's shape; row_var: with a last dim of 1, col_var: with a second-to-last dim of 1
      const int64_t ones = k == kRow ? p.dim() - 1 : k == kCol ? p.dim() - 2 : -1;
      bool shaped = t.dim() == p.dim();
      for (int64_t d = 0; shaped && d < p.dim(); ++d) shaped = t.size(d) == (d == ones ? 1 : p.size(d));
      TORCH_CHECK(shaped, "adafactor: operand ", k, " of param ", i, " has shape ", t.sizes(),
                  ", the param has ", p.sizes());
      TORCH_CHECK(supported(t.scalar_type()), "adafactor: unsupported dtype ", t.scalar_type(),
                  " (fp32, fp64, bf16 and fp16 are)");
      const bool written = k != kG || amp.unscale;
      if (written && !t.is_inference()) bump.push_back(t.unsafeGetTensorImpl());
      if (t.is_contiguous()) {  // the usual case (contiguous() is a dispatcher call: not per step)
        x.data[k] = t.data_ptr();
      } else {
        copies.emplace_back(t, t.contiguous(), written);
        x.data[k] = std::get<1>(copies.back()).data_ptr();
      }
      x.dtype[k] = t.scalar_type();
    }
    x.numel = p.numel();
    x.is_double = p.scalar_type() == at::kDouble;
    counters.read(i);
  }
  TORCH_CHECK(n_matrices == row_vars.size() && n_matrices == col_vars.size() && n_vectors == variances.size(),
              "adafactor: expected a row_var and col_var per param of 2 or more dims, a variance per other param");
  if (n == 0) return;
  // step scalars: one_minus_beta2_t (the callback also keeps the step values for `coefficients`)
  const std::vector<Scalars> weights = step_scalars(counters.next());
  TORCH_CHECK(weights.size() == 1, "adafactor: expected 1 column of step scalars, got ", weights.size());
  check_per_tensor("adafactor", params, {&weights[0]});
  for (size_t i = 0; i < n; ++i) ps[i].weight = PerTensor(weights[0])[i];

  // The work: items of about kChunk elements, param by param, and the waves.
  Step step(ps, eps1, decay_factor, weight_decay != 0, maximize, amp);
  Wave wave;
  int64_t workspace = 0, wave_work = 0;  // doubles
  auto close_wave = [&](int64_t end_param) {
    wave.end_param = end_param;
    wave.end_item = static_cast<int64_t>(step.items.size());
    wave.end_factored = static_cast<int64_t>(step.factored.size());
    wave.end_matrix = static_cast<int64_t>(step.matrices.size());
    if (wave.end_param > wave.first_param) step.waves.push_back(wave);
    wave = Wave{end_param, end_param, wave.end_item, wave.end_item, wave.end_factored, wave.end_factored,
                wave.end_matrix, wave.end_matrix, 0};
    wave_work = 0;
  };
  for (size_t i = 0; i < n; ++i) {
    Param& x = ps[i];
    const auto idx = static_cast<int64_t>(i);
    if (wave.total > 0 && wave.total + x.numel > kWave) close_wave(idx);
    x.first_item = x.end_item = static_cast<int64_t>(step.items.size());
    wave.total += x.numel;
    if (x.numel == 0) continue;  // nothing to update (the host refuses them: torch divides by 0)
    if (!x.factored) {
      for (int64_t b = 0; b < x.numel; b += kChunk) step.items.push_back({idx, b, std::min(x.numel, b + kChunk)});
      x.end_item = static_cast<int64_t>(step.items.size());
      x.work = wave_work;
      wave_work += x.work_size();
      workspace = std::max(workspace, wave_work);
      continue;
    }
    const at::Tensor& p = params[i];
    x.rows = p.size(-2), x.cols = p.size(-1), x.batches = x.numel / (x.rows * x.cols);
    // items of whole matrices when they are small (their column sums then need no merging)
    x.whole = x.rows * x.cols <= kChunk;
    const int64_t rows = x.batches * x.rows;
    const int64_t per_item = x.whole ? kChunk / (x.rows * x.cols) * x.rows : std::max<int64_t>(1, kChunk / x.cols);
    for (int64_t q = 0; q < rows; q += per_item) {
      step.factored.push_back(static_cast<int64_t>(step.items.size()));
      step.items.push_back({idx, q, std::min(rows, q + per_item)});
    }
    x.end_item = static_cast<int64_t>(step.items.size());
    const int64_t per_matrix = std::max<int64_t>(1, kChunk / (x.rows + x.cols));
    for (int64_t b = 0; b < x.batches; b += per_matrix) {
      step.matrices.push_back({idx, b, std::min(x.batches, b + per_matrix)});
    }
    x.work = wave_work;
    wave_work += x.work_size();
    workspace = std::max(workspace, wave_work);
  }
  close_wave(static_cast<int64_t>(n));
  step.allocate(workspace);

  for (const Wave& w : step.waves) {
    const std::vector<double> p_sq = step.stats(w);
    const std::vector<double> u_sq = step.update_norms(w);
    std::vector<double> p_norms(p_sq.size()), u_norms(u_sq.size());
    for (size_t k = 0; k < p_sq.size(); ++k) {
      const at::ScalarType st = params[w.first_param + k].scalar_type();
      p_norms[k] = norm_as(st, p_sq[k]);
      u_norms[k] = norm_as(st, u_sq[k]);
    }
    const std::vector<double> coefs = coefficients(w.first_param, p_norms, u_norms);
    TORCH_CHECK(coefs.size() == p_sq.size(), "adafactor: expected ", p_sq.size(), " coefficients, got ",
                coefs.size());
    step.apply(w, coefs);
  }

  for (auto& [original, copy, written] : copies) {
    if (written) original.copy_(copy);
  }
  // written through raw pointers: record the in-place updates as torch's ops would
  for (c10::TensorImpl* t : bump) t->bump_version();
  for (size_t i = 0; i < n; ++i) counters.commit(i);
  counters.commit_others();
}

}  // namespace optimlab
