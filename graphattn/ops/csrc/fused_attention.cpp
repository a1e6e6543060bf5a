// Fused graph attention on CPU: score -> per-destination softmax -> aggregate,
// without any [E, H, C] intermediate.
//
// Every score kind is one general form, s = sum_c w[c] * phi(z[c]) + edge_bias[e,h] with
// z = src_term[j,h,:] + edge_score_term[e,h,:] (+ dst_term[i,h,:]), for an edge e = (j -> i) in
// CSR order (sorted by destination i) and a head h; graphattn/ops/_fused.py's docstring states
// it once, with each kind trait (KindTraits<KIND>, generated into score_kinds.h from the table
// there, with phi's activate / activate_grad). The code below writes the general form and its
// derivative once; no kind is named in it. Messages are value[j,h,:] (+ edge_value[e,h,:]).
//
// Forward: two passes over each destination row (its scores and their max into a
// per-row buffer, then exponentials and the weighted sum); saves out and, per node
// and head, stats[i,h] = (row max m, log of the normaliser l) only. The two are kept
// apart rather than summed into a log-sum-exp: with logits near 1e16 (fp64) or 1e7
// (fp32), m + log(l) rounds to m and every tied weight would be recomputed as 1.
// Backward recomputes the weights from the stats: a pass over the transposed graph
// (per source j, no atomics) produces the source-side and per-edge gradients, a pass
// over rows the destination-side ones. With dout_dot_out[i,h] = sum_c d_out[i,h,c] *
// out[i,h,c] (FlashAttention's "delta"), the score gradient of edge e = (j -> i) is
// alpha * (keep_scale * dout_dot_msg - dout_dot_out[i,h]), where dout_dot_msg =
// <d_out[i,h,:], message of e> and keep_scale is e's dropout multiplier (1/(1-p) or 0).
// Where the delta is not finite (an inf or NaN in d_out or out) it is recomputed as the
// reference forms it, a sum over the row's edges (exact_nonfinite_deltas).
// Dropout masks come from a counter-based hash of (seed, edge, head), so the
// backward regenerates them instead of storing them.
//
// Inputs are validated in Python before any call (graphattn/ops/_inputs.py and
// Graph.ensure_valid): the kernels trust the CSR arrays. The entry points still
// check the O(1) facts (sizes that must agree), and a build with
// GRAPHATTN_BOUNDS_CHECK defined (GRAPHATTN_KERNEL_CHECKS=1, used by the tests)
// checks every index before it is used.
//
// NaN and inf propagate as in the reference: a row whose normaliser is NaN gives
// NaN outputs, weights and gradients (the tests compare NaN positions); only an
// exact zero normaliser (no in-edges, or all scores -inf) gives zeros.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "score_kinds.h"

#ifdef GRAPHATTN_BOUNDS_CHECK
#define GA_CHECK_INDEX(idx, bound, what) \
  TORCH_CHECK((idx) >= 0 && (idx) < (bound), "graphattn kernel: ", what, " index ", (idx), " out of [0, ", (bound), ")")
#else
#define GA_CHECK_INDEX(idx, bound, what) ((void)0)
#endif

namespace {

// Reductions over channels. A plain `acc += x[c] * y[c]` loop is a serial chain of
// dependent adds (the compiler may not reorder floating-point sums), one FMA latency
// per channel; `omp simd reduction` lets it keep vector partial sums instead, which
// made the GAT backward about 2x faster at 256 channels. The order is fixed, so the
// result is still deterministic.
template <typename T>
inline T dot(const T* __restrict__ x, const T* __restrict__ y, int64_t n) {
  T acc = T(0);
#pragma omp simd reduction(+ : acc)
  for (int64_t c = 0; c < n; ++c) acc += x[c] * y[c];
  return acc;
}

// <x, y + z>
template <typename T>
inline T dot_sum(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ z, int64_t n) {
  T acc = T(0);
#pragma omp simd reduction(+ : acc)
  for (int64_t c = 0; c < n; ++c) acc += x[c] * (y[c] + z[c]);
  return acc;
}

template <typename T>
inline T sum(const T* __restrict__ x, int64_t n) {
  T acc = T(0);
#pragma omp simd reduction(+ : acc)
  for (int64_t c = 0; c < n; ++c) acc += x[c];
  return acc;
}

// The activations (score_kinds.h) are written in forms GCC vectorises: LeakyReLU as
// max/min instead of a select, its derivative as a 0/1 select of constants
// (if-converted under -fno-trapping-math). The channel loops below copy the slope to
// a local first: read through the Args reference it is reloaded every iteration and
// the loop stays scalar and branchy, and with a sign that is a coin flip per channel
// the branch mispredicts half the time.

// ---- Vector helpers -------------------------------------------------------
// exp on the kernels' hot paths. For float, Cephes' expf in a form GCC vectorises
// (range reduction x = n ln2 + r, a degree-6 polynomial for e^r, 2^n from the
// exponent bits; about 1 ulp): glibc's expf is a call per element and was a third
// of the forward's time. It is only used on x <= 0 (a score minus its row's max, or
// minus the log normaliser too) and keeps the semantics the kernels rely on:
// exp(-inf) = 0 exactly, NaN stays NaN; results below FLT_MIN flush to 0.
// Doubles keep std::exp (gradcheck runs in float64).
template <typename T>
inline T exp_nonpos(T x) { return std::exp(x); }
template <>
inline float exp_nonpos<float>(float x) {
  constexpr float kLo = -87.33654f, kHi = 88.3762626647949f;  // ln(FLT_MIN), ln(FLT_MAX)
  const float xc = std::min(std::max(x, kLo), kHi);               // NaN passes through both
  float fx = std::floor(xc * 1.44269504088896341f + 0.5f);
  const float r = xc - fx * 0.693359375f + fx * 2.12194440e-4f;  // x - n ln2, ln2 in two parts
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * (r * r) + r + 1.0f;
  fx = fx == fx ? fx : 0.0f;  // a NaN's exponent is never used (y is NaN), but the cast must be defined
  const int32_t bits = (static_cast<int32_t>(fx) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  return x < kLo ? 0.0f : y * two_n;
}

// Start fetching n elements from p into cache (never faults, even out of range).
template <typename T>
inline void prefetch(const T* p, int64_t n) {
  const char* b = reinterpret_cast<const char*>(p);
  for (int64_t off = 0; off < n * static_cast<int64_t>(sizeof(T)); off += 64) __builtin_prefetch(b + off);
}
// How many edges ahead the gathers of a row are prefetched: enough to cover a DRAM
// round trip behind the work of a few edges.
constexpr int64_t kPrefetchAhead = 6;

// 256-bit vectors through GCC's vector extension (one AVX register of floats or doubles).
template <typename T>
struct Vec {
  typedef T V __attribute__((vector_size(32)));
  static constexpr int64_t L = 32 / sizeof(T);
  static inline V load(const T* p) { V v; std::memcpy(&v, p, sizeof(V)); return v; }
  static inline void store(T* p, V v) { std::memcpy(p, &v, sizeof(V)); }
};

// out[h*C + c] = sum_k w[k*H + h] * rows[idx[k]*H*C + h*C + c], for one destination row
// (forward: messages into a node; backward: output gradients into a source's value
// gradient). The sum runs over k in order for each channel, as a plain loop would,
// but four vectors of channels stay in registers across all k instead of a
// load-add-store per edge. Needs C % L == 0; plain_weighted_sum is the general form.
template <typename T, typename I>
inline void tiled_weighted_sum(const T* __restrict__ w, const I* __restrict__ idx, int64_t deg,
                               const T* __restrict__ rows, int64_t H, int64_t C, T* __restrict__ out) {
  using V = typename Vec<T>::V;
  constexpr int64_t L = Vec<T>::L;
  const int64_t HC = H * C;
  int64_t c0 = 0;
  for (; c0 + 4 * L <= HC; c0 += 4 * L) {
    const int64_t h0 = c0 / C, h1 = (c0 + L) / C, h2 = (c0 + 2 * L) / C, h3 = (c0 + 3 * L) / C;
    V a0 = {}, a1 = {}, a2 = {}, a3 = {};
    for (int64_t k = 0; k < deg; ++k) {
      const T* r = rows + idx[k] * HC + c0;
      const T* wk = w + k * H;
      a0 += wk[h0] * Vec<T>::load(r);
      a1 += wk[h1] * Vec<T>::load(r + L);
      a2 += wk[h2] * Vec<T>::load(r + 2 * L);
      a3 += wk[h3] * Vec<T>::load(r + 3 * L);
    }
    Vec<T>::store(out + c0, a0);
    Vec<T>::store(out + c0 + L, a1);
    Vec<T>::store(out + c0 + 2 * L, a2);
    Vec<T>::store(out + c0 + 3 * L, a3);
  }
  for (; c0 < HC; c0 += L) {
    const int64_t h0 = c0 / C;
    V a0 = {};
    for (int64_t k = 0; k < deg; ++k) a0 += w[k * H + h0] * Vec<T>::load(rows + idx[k] * HC + c0);
    Vec<T>::store(out + c0, a0);
  }
}

// The same sum for any C, with an optional per-edge term added to each row
// (extra[k*H*C + ...], edge-ordered).
template <typename T, typename I>
inline void plain_weighted_sum(const T* __restrict__ w, const I* __restrict__ idx, int64_t deg,
                               const T* __restrict__ rows, const T* __restrict__ extra, int64_t H, int64_t C,
                               T* __restrict__ out) {
  const int64_t HC = H * C;
  std::fill(out, out + HC, T(0));
  for (int64_t k = 0; k < deg; ++k) {
    const T* r = rows + idx[k] * HC;
    const T* x = extra ? extra + k * HC : nullptr;
    for (int64_t h = 0; h < H; ++h) {
      const T wh = w[k * H + h];
      T* __restrict__ o = out + h * C;
      if (x) {
        for (int64_t c = 0; c < C; ++c) o[c] += wh * (r[h * C + c] + x[h * C + c]);
      } else {
        for (int64_t c = 0; c < C; ++c) o[c] += wh * r[h * C + c];
      }
    }
  }
}

template <typename T, typename I>
inline void weighted_sum(const T* w, const I* idx, int64_t deg, const T* rows, const T* extra, int64_t H,
                         int64_t C, T* out) {
  if (extra == nullptr && C % Vec<T>::L == 0)
    tiled_weighted_sum(w, idx, deg, rows, H, C, out);
  else
    plain_weighted_sum(w, idx, deg, rows, extra, H, C, out);
}

inline double uniform_hash(uint64_t seed, uint64_t counter) {
  uint64_t x = seed + counter * 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  x ^= x >> 31;
  return static_cast<double>(x >> 11) * (1.0 / 9007199254740992.0);
}

template <typename T>
struct Args {
  int64_t H, F, Cv;  // heads, score feature size, value size
  int64_t Ns, Nd, E; // source nodes, destination nodes, edges (for the checks)
  const T* dst_term;         // [Nd, H, F] destination-side score term; null when absent (GAT only)
  const T* src_term;         // [Ns, H, F] source-side score term
  const T* value;            // [Ns, H, Cv] messages
  const T* edge_score_term;  // [E, H, F] per-edge term inside the score, or null
  const T* edge_bias;        // [E, H] per-edge term added to the score, or null
  const T* edge_value;       // [E, H, Cv] per-edge term added to the message, or null
  const T* att;              // [H, F] (GATv2)
  T slope, scale;
  double p;                  // dropout probability
  uint64_t seed;

  // z = src_term[j,h,:] (+ dst_term[i,h,:] when the kind adds it) (+ edge_score_term[e,h,:]) into z[0..F).
  template <int KIND>
  inline void pre_activation(int64_t i, int64_t j, int64_t e, int64_t h, T* __restrict__ z) const {
    const T* __restrict__ src = src_term + (j * H + h) * F;
    if constexpr (KindTraits<KIND>::adds_dst) {
      const T* __restrict__ dst = dst_term + (i * H + h) * F;
      for (int64_t c = 0; c < F; ++c) z[c] = src[c] + dst[c];
    } else {
      for (int64_t c = 0; c < F; ++c) z[c] = src[c];
    }
    if (edge_score_term) {
      const T* __restrict__ es = edge_score_term + (e * H + h) * F;
      for (int64_t c = 0; c < F; ++c) z[c] += es[c];
    }
  }

  // The channel weights w of head h without the scale (null: all ones), and the scale.
  template <int KIND>
  inline const T* channel_weight(int64_t i, int64_t h) const {
    constexpr int W = KindTraits<KIND>::weight;
    if constexpr (W == kWeight_att) return att + h * F;
    else if constexpr (W == kWeight_dst) return dst_term + (i * H + h) * F;
    else return nullptr;
  }
  template <int KIND>
  inline T weight_scale() const { return KindTraits<KIND>::weight == kWeight_dst ? scale : T(1); }

  // Scores of edge e = (j -> i) for all heads into s[0..H).
  template <int KIND>
  inline void scores(int64_t i, int64_t j, int64_t e, T* __restrict__ s) const {
    using K = KindTraits<KIND>;
    if constexpr (K::scalar) {  // one term per head: vectorised across heads
      static_assert(K::weight == kWeight_one, "a scalar kind has no channel weight");
      const T* src = src_term + j * H;
      for (int64_t h = 0; h < H; ++h) s[h] = src[h];
      if (K::adds_dst && dst_term) {
        const T* dst = dst_term + i * H;
        for (int64_t h = 0; h < H; ++h) s[h] += dst[h];
      }
      if (edge_score_term) {
        const T* es = edge_score_term + e * H;
        for (int64_t h = 0; h < H; ++h) s[h] += es[h];
      }
      const T sl = slope;
      for (int64_t h = 0; h < H; ++h) s[h] = activate<K::activation>(s[h], sl);
    } else if constexpr (K::activation == kAct_identity && K::weight != kWeight_one) {
      // phi(z) = z: s = w . z, summed without a z buffer
      for (int64_t h = 0; h < H; ++h) {
        const T* w = channel_weight<KIND>(i, h);
        const T* src = src_term + (j * H + h) * F;
        T acc = edge_score_term ? dot_sum(w, src, edge_score_term + (e * H + h) * F, F) : dot(w, src, F);
        if constexpr (K::adds_dst) acc += dot(w, dst_term + (i * H + h) * F, F);
        s[h] = acc * weight_scale<KIND>();
      }
    } else {
      T z[kMaxF];
      for (int64_t h = 0; h < H; ++h) {
        pre_activation<KIND>(i, j, e, h, z);
        const T sl = slope;
#pragma omp simd
        for (int64_t c = 0; c < F; ++c) z[c] = activate<K::activation>(z[c], sl);
        const T* w = channel_weight<KIND>(i, h);
        s[h] = (w ? dot(w, z, F) : sum(z, F)) * weight_scale<KIND>();
      }
    }
    if (K::takes_edge_bias && edge_bias) {
      const T* eb = edge_bias + e * H;
      for (int64_t h = 0; h < H; ++h) s[h] += eb[h];
    }
  }

  // dropout multiplier (keep_scale) of edge e, head h: 1/(1-p) if kept, else 0
  inline T keep(int64_t e, int64_t h) const {
    if (p <= 0.0) return T(1);
    return uniform_hash(seed, static_cast<uint64_t>(e * H + h)) >= p ? T(1.0 / (1.0 - p)) : T(0);
  }
};

template <typename T>
Args<T> make_args(int64_t kind, int64_t nd, int64_t ne, const torch::Tensor& dst_term, const torch::Tensor& src_term,
                  const torch::Tensor& value, const torch::Tensor& edge_score_term, const torch::Tensor& edge_bias,
                  const torch::Tensor& edge_value, const torch::Tensor& att, double slope, double scale, double p,
                  int64_t seed) {
  Args<T> a;
  a.H = src_term.size(1);
  a.F = kind_scalar(kind) ? 1 : src_term.size(2);
  a.Cv = value.size(2);
  a.Ns = value.size(0);
  a.Nd = nd;
  a.E = ne;
  auto ptr = [](const torch::Tensor& t) -> const T* { return t.numel() ? t.data_ptr<T>() : nullptr; };
  a.dst_term = ptr(dst_term);
  a.src_term = src_term.data_ptr<T>();
  a.value = value.data_ptr<T>();
  a.edge_score_term = ptr(edge_score_term);
  a.edge_bias = ptr(edge_bias);
  a.edge_value = ptr(edge_value);
  a.att = ptr(att);
  a.slope = static_cast<T>(slope);
  a.scale = static_cast<T>(scale);
  a.p = p;
  a.seed = static_cast<uint64_t>(seed);
  return a;
}

// The O(1) facts every entry point relies on; the O(E) ones are the caller's (see top).
void check_inputs(int64_t kind, const torch::Tensor& rowptr, const torch::Tensor& col, int64_t Nd,
                  const torch::Tensor& dst_term, const torch::Tensor& src_term, const torch::Tensor& value,
                  const torch::Tensor& edge_score_term, const torch::Tensor& edge_bias, const torch::Tensor& edge_value,
                  const torch::Tensor& att) {
  TORCH_CHECK(rowptr.device().is_cpu() && col.device().is_cpu(), "graph must be on CPU");
  TORCH_CHECK(rowptr.scalar_type() == torch::kLong && col.scalar_type() == torch::kLong, "indices must be int64");
  TORCH_CHECK(rowptr.dim() == 1 && col.dim() == 1 && rowptr.size(0) == Nd + 1, "rowptr must have num_dst + 1 entries");
  TORCH_CHECK(src_term.dim() >= 2 && value.dim() == 3 && src_term.size(0) == value.size(0) &&
                  src_term.size(1) == value.size(1),
              "source-side tensors disagree in rows or heads");
  TORCH_CHECK(is_kind(kind), "unknown score kind ", kind);
  const int64_t E = col.size(0), H = src_term.size(1), F = kind_scalar(kind) ? 1 : src_term.size(2);
  TORCH_CHECK(!dst_term.numel() || (dst_term.size(0) == Nd && dst_term.numel() == Nd * H * F),
              "destination-side tensor has the wrong shape");
  TORCH_CHECK(!edge_score_term.numel() || edge_score_term.numel() == E * H * F,
              "per-edge score term has the wrong shape");
  TORCH_CHECK(!edge_bias.numel() || edge_bias.numel() == E * H, "per-edge bias has the wrong shape");
  TORCH_CHECK(!edge_value.numel() || edge_value.numel() == E * H * value.size(2),
              "per-edge value term has the wrong shape");
  TORCH_CHECK(kind_weight(kind) != kWeight_att || att.numel() == H * F, "att has the wrong shape");
  // A kind whose score reads dst_term per channel needs it; a scalar kind may go without.
  TORCH_CHECK(kind_scalar(kind) || dst_term.numel() == Nd * H * F,
              "score kind ", kind_name(kind), " needs its destination-side tensor [num_dst, H, F]");
  // Kinds that take their per-edge term inside the score take no bias: the backward
  // writes a bias gradient only for the kinds that take one.
  TORCH_CHECK(kind_takes_edge_bias(kind) || !edge_bias.numel(), "score kind ", kind_name(kind), " takes no per-edge bias");
  // The z buffer on the stack (kMaxF channels) is sized for this, in every entry.
  TORCH_CHECK(!kind_holds_channel_buffer(kind) || F <= kMaxF, "score kind ", kind_name(kind), " supports at most ",
              kMaxF, " channels per head");
  for (const auto* t :
       {&rowptr, &col, &dst_term, &src_term, &value, &edge_score_term, &edge_bias, &edge_value, &att})
    TORCH_CHECK(t->is_contiguous(), "inputs must be contiguous");
}

template <typename T, int KIND>
void forward_impl(const Args<T>& a, const int64_t* rowptr, const int64_t* col, int64_t Nd, T* out, T* stats) {
  const int64_t H = a.H, Cv = a.Cv, HC = H * Cv;
  constexpr T NEG_INF = -std::numeric_limits<T>::infinity();
  at::parallel_for(0, Nd, 64, [&](int64_t begin, int64_t end) {
    std::vector<T> m(H), l(H), wbuf;
    const int64_t* row_end = col + rowptr[end];
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r0 = rowptr[i], deg = rowptr[i + 1] - r0;
      GA_CHECK_INDEX(r0, a.E + 1, "rowptr");
      GA_CHECK_INDEX(r0 + deg, a.E + 1, "rowptr");
      const int64_t* src = col + r0;
      // pass 1: the row's scores and their per-head max, fetching each edge's message
      // row while the scores of the next ones are computed
      wbuf.resize(static_cast<size_t>(deg * H));
      std::fill(m.begin(), m.end(), NEG_INF);
      for (int64_t k = 0; k < deg; ++k) {
        if (src + k + kPrefetchAhead < row_end) prefetch(a.src_term + src[k + kPrefetchAhead] * H * a.F, H * a.F);
        GA_CHECK_INDEX(src[k], a.Ns, "source");
        prefetch(a.value + src[k] * HC, HC);
        T* s = wbuf.data() + k * H;
        a.template scores<KIND>(i, src[k], r0 + k, s);
        for (int64_t h = 0; h < H; ++h) m[h] = s[h] > m[h] ? s[h] : m[h];
      }
      for (int64_t h = 0; h < H; ++h) m[h] = m[h] == NEG_INF ? T(0) : m[h];  // all-masked row
      // pass 2: exponentials (exp(-inf) = 0 for masked edges) and the normaliser,
      // then dropout, then the weighted sum of messages
      std::fill(l.begin(), l.end(), T(0));
      for (int64_t k = 0; k < deg; ++k) {
        T* __restrict__ p = wbuf.data() + k * H;
        const T* __restrict__ mh = m.data();
        T* __restrict__ lh = l.data();
#pragma omp simd
        for (int64_t h = 0; h < H; ++h) {
          p[h] = exp_nonpos(p[h] - mh[h]);
          lh[h] += p[h];
        }
      }
      if (a.p > 0.0)
        for (int64_t k = 0; k < deg; ++k)
          for (int64_t h = 0; h < H; ++h) wbuf[k * H + h] *= a.keep(r0 + k, h);
      T* o = out + i * HC;
      weighted_sum(wbuf.data(), src, deg, a.value, a.edge_value ? a.edge_value + r0 * HC : nullptr, H, Cv, o);
      for (int64_t h = 0; h < H; ++h) {
        // l == 0: no edge or all -inf, output 0. A NaN l (a NaN or +inf score) stays NaN.
        const T inv = l[h] == T(0) ? T(0) : T(1) / l[h];
        for (int64_t c = 0; c < Cv; ++c) o[h * Cv + c] *= inv;
        stats[(i * H + h) * 2] = l[h] == T(0) ? NEG_INF : m[h];
        stats[(i * H + h) * 2 + 1] = l[h] == T(0) ? NEG_INF : std::log(l[h]);
      }
    }
  });
}

// GA_DISPATCH_KIND (a run-time kind to a compile-time KIND) is in score_kinds.h.

// The normalised weights of a row's scores s[0..H) from its stats st[2h], st[2h+1] =
// (max, log normaliser), in place. A NaN stat gives NaN; an empty row (max -inf)
// gives 0; a -inf score gives exp(-inf) = 0. The formula's one definition is
// graphattn/ops/softmax.py's weights_from_stats; this is it inline, in the kernel.
template <typename T>
inline void weights_from_stats(T* __restrict__ s, const T* __restrict__ st, int64_t H) {
  constexpr T NEG_INF = -std::numeric_limits<T>::infinity();
#pragma omp simd
  for (int64_t h = 0; h < H; ++h) {
    const T m = st[2 * h], log_l = st[2 * h + 1];
    const T w = exp_nonpos((s[h] - m) - log_l);
    s[h] = m == NEG_INF ? T(0) : w;
  }
}

// The gradients an edge e = (j -> i) sends to its source side and to itself, from its
// score gradients ds[0..H): with dz = ds * w * phi'(z), src_term and edge_score_term
// get dz, edge_bias gets ds. gp[e] keeps what the destination pass needs: dz for a
// scalar kind (its dst_term gradient is the row's sum of dz), else ds.
template <int KIND, typename T>
inline void source_side_gradients(const Args<T>& a, int64_t i, int64_t j, int64_t e, const T* ds, T* d_src_term,
                                  T* d_edge_score_term, T* d_edge_bias, T* gp) {
  using K = KindTraits<KIND>;
  const int64_t H = a.H, F = a.F;
  const T sl = a.slope;
  if constexpr (K::scalar) {
    for (int64_t h = 0; h < H; ++h) {
      T z = a.src_term[j * H + h];
      if (K::adds_dst && a.dst_term) z += a.dst_term[i * H + h];
      if (a.edge_score_term) z += a.edge_score_term[e * H + h];
      const T dz = ds[h] * activate_grad<K::activation>(z, sl);
      d_src_term[j * H + h] += dz;
      if (d_edge_score_term) d_edge_score_term[e * H + h] = dz;
      gp[e * H + h] = dz;
    }
  } else {
    for (int64_t h = 0; h < H; ++h) {
      const T dsw = ds[h] * a.template weight_scale<KIND>();
      const T* __restrict__ w = a.template channel_weight<KIND>(i, h);
      T* __restrict__ dsrc = d_src_term + (j * H + h) * F;
      T* __restrict__ des = d_edge_score_term ? d_edge_score_term + (e * H + h) * F : nullptr;
      if constexpr (K::activation == kAct_identity) {  // phi' = 1: dz = ds * w
        for (int64_t c = 0; c < F; ++c) dsrc[c] += w ? dsw * w[c] : dsw;
        if (des)
          for (int64_t c = 0; c < F; ++c) des[c] = w ? dsw * w[c] : dsw;
      } else {
        T z[kMaxF];
        a.template pre_activation<KIND>(i, j, e, h, z);
#pragma omp simd
        for (int64_t c = 0; c < F; ++c) z[c] = dsw * (w ? w[c] : T(1)) * activate_grad<K::activation>(z[c], sl);
        for (int64_t c = 0; c < F; ++c) dsrc[c] += z[c];
        if (des)
          for (int64_t c = 0; c < F; ++c) des[c] = z[c];
      }
      if (K::takes_edge_bias && d_edge_bias) d_edge_bias[e * H + h] = ds[h];
      gp[e * H + h] = ds[h];
    }
  }
}

// What edge e = (j -> i), with score gradients gs[0..H) (gp[e]), sends to its
// destination side: dst_term gets ds * w * phi'(z) when the kind adds it, and
// ds * scale * phi(z) when it weights by it; att gets ds * phi(z), per row into datt_rows.
template <int KIND, typename T>
inline void destination_side_gradients(const Args<T>& a, int64_t i, int64_t j, int64_t e, const T* gs,
                                       T* d_dst_term, T* datt_rows) {
  using K = KindTraits<KIND>;
  const int64_t H = a.H, F = a.F;
  if constexpr (K::scalar) {  // gp holds dz
    for (int64_t h = 0; h < H; ++h) d_dst_term[i * H + h] += gs[h];
    return;
  } else {
    const T sl = a.slope, scale = a.template weight_scale<KIND>();
    for (int64_t h = 0; h < H; ++h) {
      const T g = gs[h];
      const T* __restrict__ w = a.template channel_weight<KIND>(i, h);
      T* __restrict__ ddst = d_dst_term + (i * H + h) * F;
      T* __restrict__ dat = K::weight == kWeight_att ? datt_rows + (i * H + h) * F : nullptr;
      auto update = [&](int64_t c, T phi, T dphi) {
        if constexpr (K::adds_dst) ddst[c] += g * (w ? w[c] * scale : T(1)) * dphi;
        if constexpr (K::weight == kWeight_att) dat[c] += g * phi;
        if constexpr (K::weight == kWeight_dst) ddst[c] += g * scale * phi;
      };
      if constexpr (K::activation == kAct_identity) {  // phi(z) = z, phi' = 1: no z buffer
        const T* __restrict__ src = a.src_term + (j * H + h) * F;
        const T* __restrict__ es = a.edge_score_term ? a.edge_score_term + (e * H + h) * F : nullptr;
        const T* __restrict__ dst = K::adds_dst ? a.dst_term + (i * H + h) * F : nullptr;
        for (int64_t c = 0; c < F; ++c) {
          T z = src[c];
          if (es) z += es[c];
          if (dst) z += dst[c];
          update(c, z, T(1));
        }
      } else {
        T z[kMaxF];
        a.template pre_activation<KIND>(i, j, e, h, z);
#pragma omp simd
        for (int64_t c = 0; c < F; ++c) update(c, activate<K::activation>(z[c], sl), activate_grad<K::activation>(z[c], sl));
      }
    }
  }
}

// The delta <d_out[i,h,:], out[i,h,:]> equals the reference's row sum
// sum_e alpha_e * keep_e * <d_out[i,h,:], message e> only while both are finite: with
// an inf in d_out, the first is +-inf where the second, a sum of +-inf terms of both
// signs, is NaN, and every score gradient of the row (and the source sides they reach)
// inherits the difference. It is finite exactly when d_out[i,h,:] and out[i,h,:] are, so
// only the rows where it is not are recomputed here, the reference's way.
template <typename T, int KIND>
void exact_nonfinite_deltas(const Args<T>& a, const int64_t* rp, const int64_t* cl, int64_t Nd, const T* stats,
                            const T* d_out, T* delta) {
  const int64_t H = a.H, Cv = a.Cv;
  at::parallel_for(0, Nd, 256, [&](int64_t begin, int64_t end) {
    std::vector<T> s(H), acc(H);
    for (int64_t i = begin; i < end; ++i) {
      bool finite = true;
      for (int64_t h = 0; h < H; ++h) finite = finite && std::isfinite(delta[i * H + h]);
      if (finite) continue;
      std::fill(acc.begin(), acc.end(), T(0));
      for (int64_t e = rp[i]; e < rp[i + 1]; ++e) {
        const int64_t j = cl[e];
        GA_CHECK_INDEX(j, a.Ns, "source");
        a.template scores<KIND>(i, j, e, s.data());
        weights_from_stats(s.data(), stats + i * H * 2, H);  // s now holds alpha
        for (int64_t h = 0; h < H; ++h) {
          const T* dOh = d_out + (i * H + h) * Cv;
          const T* vh = a.value + (j * H + h) * Cv;
          const T msg = a.edge_value ? dot_sum(dOh, vh, a.edge_value + (e * H + h) * Cv, Cv) : dot(dOh, vh, Cv);
          acc[h] += a.keep(e, h) * msg * s[h];
        }
      }
      for (int64_t h = 0; h < H; ++h)
        if (!std::isfinite(delta[i * H + h])) delta[i * H + h] = acc[h];
    }
  });
}

// I: the transposed graph's index type (int32 where the graph allows, see Graph.transpose_csr).
template <typename T, int KIND, typename I>
void backward_impl(const Args<T>& a, const int64_t* rp, const int64_t* cl, const I* cp, const I* rs, const I* id, int64_t Nd, int64_t Ns, const T* stats, const T* d_out, const T* dout_dot_out,
                   T* d_dst_term, T* d_src_term, T* d_value, T* d_edge_score_term, T* d_edge_bias, T* d_edge_value,
                   T* gp, T* datt_rows) {
  const int64_t H = a.H, Cv = a.Cv, F = a.F;
  // Pass 1, over sources j (transposed graph): source-side and per-edge gradients.
  at::parallel_for(0, Ns, 64, [&](int64_t begin, int64_t end) {
    std::vector<T> s(H), ds(H), wbuf;
    const int64_t k_end = cp[end];
    for (int64_t j = begin; j < end; ++j) {
      const T* v = a.value + j * H * Cv;
      const int64_t k0 = cp[j];
      wbuf.resize(static_cast<size_t>((cp[j + 1] - k0) * H));
      for (int64_t k = k0; k < cp[j + 1]; ++k) {
        GA_CHECK_INDEX(k, a.E, "transposed edge");
        if (k + kPrefetchAhead < k_end) {  // the destination rows this pass gathers, a few edges ahead
          const int64_t ahead = rs[k + kPrefetchAhead];
          prefetch(d_out + ahead * H * Cv, H * Cv);
          prefetch(stats + ahead * H * 2, H * 2);
          prefetch(dout_dot_out + ahead * H, H);
          if (a.dst_term) prefetch(a.dst_term + ahead * H * F, H * F);
          __builtin_prefetch(gp + id[k + kPrefetchAhead] * H, 1);  // written below, in edge order
        }
        const int64_t e = id[k], i = rs[k];
        GA_CHECK_INDEX(e, a.E, "edge id");
        GA_CHECK_INDEX(i, a.Nd, "destination");
        const T* dout_i = d_out + i * H * Cv;
        const T* ev = a.edge_value ? a.edge_value + e * H * Cv : nullptr;
        a.template scores<KIND>(i, j, e, s.data());
        weights_from_stats(s.data(), stats + i * H * 2, H);  // s now holds alpha
        T* wv = wbuf.data() + (k - k0) * H;
        for (int64_t h = 0; h < H; ++h) {
          const T alpha = s[h];
          const T keep_scale = a.keep(e, h);
          const T* dOh = dout_i + h * Cv;
          const T* vh = v + h * Cv;
          const T dout_dot_msg = ev ? dot_sum(dOh, vh, ev + h * Cv, Cv) : dot(dOh, vh, Cv);
          ds[h] = alpha * (keep_scale * dout_dot_msg - dout_dot_out[i * H + h]);
          wv[h] = alpha * keep_scale;
        }
        if (d_edge_value) {
          for (int64_t h = 0; h < H; ++h) {
            const T* dOh = dout_i + h * Cv;
            T* devh = d_edge_value + (e * H + h) * Cv;
            for (int64_t c = 0; c < Cv; ++c) devh[c] = wv[h] * dOh[c];
          }
        }
        source_side_gradients<KIND>(a, i, j, e, ds.data(), d_src_term, d_edge_score_term, d_edge_bias, gp);
      }
      // the value gradient: the output gradients of j's destinations, weighted
      weighted_sum(wbuf.data(), rs + k0, cp[j + 1] - k0, d_out, static_cast<const T*>(nullptr), H, Cv,
                   d_value + j * H * Cv);
    }
  });

  // Pass 2, over destinations i: destination-side gradients (and GATv2's att, per row).
  if (d_dst_term == nullptr) return;
  at::parallel_for(0, Nd, 64, [&](int64_t begin, int64_t end) {
    const int64_t e_end = rp[end];
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t e = rp[i]; e < rp[i + 1]; ++e) {
        GA_CHECK_INDEX(e, a.E, "edge");
        // a per-channel kind reads the source row again: gather it a few edges ahead
        if (!KindTraits<KIND>::scalar && e + kPrefetchAhead < e_end)
          prefetch(a.src_term + cl[e + kPrefetchAhead] * H * F, H * F);
        const int64_t j = cl[e];
        GA_CHECK_INDEX(j, a.Ns, "source");
        destination_side_gradients<KIND>(a, i, j, e, gp + e * H, d_dst_term, datt_rows);
      }
    }
  });
}

}  // namespace

std::vector<torch::Tensor> fused_forward(int64_t kind, torch::Tensor rowptr, torch::Tensor col, int64_t Nd,
                                         torch::Tensor dst_term, torch::Tensor src_term, torch::Tensor value,
                                         torch::Tensor edge_score_term, torch::Tensor edge_bias,
                                         torch::Tensor edge_value, torch::Tensor att, double slope, double scale,
                                         double p, torch::Tensor seed_t) {
  check_inputs(kind, rowptr, col, Nd, dst_term, src_term, value, edge_score_term, edge_bias, edge_value, att);
  const int64_t seed = seed_t.item<int64_t>();
  const int64_t H = src_term.size(1), Cv = value.size(2);
  auto out = torch::empty({Nd, H, Cv}, value.options());
  auto stats = torch::empty({Nd, H, 2}, value.options());
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "fused_forward", [&] {
    auto a = make_args<scalar_t>(kind, Nd, col.size(0), dst_term, src_term, value, edge_score_term, edge_bias,
                                 edge_value, att, slope, scale, p, seed);
    GA_DISPATCH_KIND(kind, [&] {
      forward_impl<scalar_t, KIND>(a, rowptr.data_ptr<int64_t>(), col.data_ptr<int64_t>(), Nd,
                                   out.data_ptr<scalar_t>(), stats.data_ptr<scalar_t>());
    });
  });
  return {out, stats};
}

// Normalised weights alpha[e, h] (CSR order, before dropout) from the saved stats.
torch::Tensor fused_weights(int64_t kind, torch::Tensor rowptr, torch::Tensor col, torch::Tensor stats,
                            torch::Tensor dst_term, torch::Tensor src_term, torch::Tensor value,
                            torch::Tensor edge_score_term, torch::Tensor edge_bias, torch::Tensor edge_value,
                            torch::Tensor att, double slope, double scale) {
  const int64_t Nd = rowptr.size(0) - 1, H = src_term.size(1), E = col.size(0);
  check_inputs(kind, rowptr, col, Nd, dst_term, src_term, value, edge_score_term, edge_bias, edge_value, att);
  TORCH_CHECK(stats.numel() == Nd * H * 2, "stats has the wrong shape");
  auto alpha = torch::empty({E, H}, value.options());
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "fused_weights", [&] {
    auto a = make_args<scalar_t>(kind, Nd, col.size(0), dst_term, src_term, value, edge_score_term, edge_bias,
                                 edge_value, att, slope, scale, 0.0, 0);
    const int64_t* rp = rowptr.data_ptr<int64_t>();
    const int64_t* cl = col.data_ptr<int64_t>();
    const scalar_t* st = stats.data_ptr<scalar_t>();
    scalar_t* al = alpha.data_ptr<scalar_t>();
    GA_DISPATCH_KIND(kind, [&] {
      at::parallel_for(0, Nd, 64, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i)
          for (int64_t e = rp[i]; e < rp[i + 1]; ++e) {
            GA_CHECK_INDEX(e, a.E, "edge");
            GA_CHECK_INDEX(cl[e], a.Ns, "source");
            a.template scores<KIND>(i, cl[e], e, al + e * H);
            weights_from_stats(al + e * H, st + i * H * 2, H);
          }
      });
    });
  });
  return alpha;
}

// Gradients. Returns {d_dst_term, d_src_term, d_value, d_edge_score_term, d_edge_bias, d_edge_value, datt};
// a gradient whose input is absent is an empty tensor. out is the forward's output, for
// dout_dot_out[i, h] = sum_c d_out[i, h, c] * out[i, h, c], computed here.
std::vector<torch::Tensor> fused_backward(int64_t kind, torch::Tensor rowptr, torch::Tensor col,
                                          torch::Tensor colptr, torch::Tensor row_by_src, torch::Tensor eid,
                                          torch::Tensor dst_term, torch::Tensor src_term, torch::Tensor value,
                                          torch::Tensor edge_score_term, torch::Tensor edge_bias,
                                          torch::Tensor edge_value, torch::Tensor att, torch::Tensor stats,
                                          torch::Tensor d_out, torch::Tensor out, double slope, double scale,
                                          double p, torch::Tensor seed_t) {
  const int64_t Nd = rowptr.size(0) - 1, Ns = colptr.size(0) - 1, E = col.size(0);
  check_inputs(kind, rowptr, col, Nd, dst_term, src_term, value, edge_score_term, edge_bias, edge_value, att);
  TORCH_CHECK(Ns == src_term.size(0) && row_by_src.size(0) == E && eid.size(0) == E,
              "transposed graph has the wrong shape");
  TORCH_CHECK((colptr.scalar_type() == torch::kLong || colptr.scalar_type() == torch::kInt) &&
                  row_by_src.scalar_type() == colptr.scalar_type() && eid.scalar_type() == colptr.scalar_type(),
              "transposed graph indices must all be int64 or all int32");
  TORCH_CHECK(colptr.is_contiguous() && row_by_src.is_contiguous() && eid.is_contiguous(), "inputs must be contiguous");
  TORCH_CHECK(stats.numel() == Nd * src_term.size(1) * 2 && d_out.numel() == Nd * src_term.size(1) * value.size(2) &&
                  out.numel() == d_out.numel(),
              "saved tensors have the wrong shape");
  TORCH_CHECK(stats.is_contiguous() && d_out.is_contiguous() && out.is_contiguous(), "inputs must be contiguous");
  const int64_t seed = seed_t.item<int64_t>();
  const int64_t H = src_term.size(1), Cv = value.size(2);
  // Each absent gradient gets its own empty tensor: outputs of a custom op must not alias.
  auto none = [&]() { return torch::empty({0}, value.options()); };
  auto d_src_term = torch::zeros_like(src_term);
  auto d_value = torch::empty_like(value);  // every row is written (a source with no edges gets zeros)
  auto dout_dot_out = torch::empty({Nd, H}, value.options());
  auto d_dst_term = dst_term.numel() ? torch::zeros_like(dst_term) : none();
  auto d_edge_score_term = edge_score_term.numel() ? torch::empty_like(edge_score_term) : none();
  auto d_edge_bias = edge_bias.numel() ? torch::empty_like(edge_bias) : none();
  auto d_edge_value = edge_value.numel() ? torch::empty_like(edge_value) : none();
  auto g = torch::empty({E, H}, value.options());  // per-edge score gradient (scalar kinds: w.r.t. z)
  const bool has_att = kind_weight(kind) == kWeight_att;
  torch::Tensor datt_rows = has_att ? torch::zeros({Nd, H, src_term.size(2)}, value.options()) : none();

  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "fused_backward", [&] {
    auto a = make_args<scalar_t>(kind, Nd, col.size(0), dst_term, src_term, value, edge_score_term, edge_bias,
                                 edge_value, att, slope, scale, p, seed);
    const scalar_t* dO = d_out.data_ptr<scalar_t>();
    const scalar_t* O = out.data_ptr<scalar_t>();
    scalar_t* delta = dout_dot_out.data_ptr<scalar_t>();
    at::parallel_for(0, Nd * H, 1024, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) delta[r] = dot(dO + r * Cv, O + r * Cv, Cv);
    });
    auto run = [&](auto index_type) {
      using I = decltype(index_type);
      GA_DISPATCH_KIND(kind, [&] {
      exact_nonfinite_deltas<scalar_t, KIND>(a, rowptr.data_ptr<int64_t>(), col.data_ptr<int64_t>(), Nd,
                                             stats.data_ptr<scalar_t>(), dO, delta);
      backward_impl<scalar_t, KIND, I>(a, rowptr.data_ptr<int64_t>(), col.data_ptr<int64_t>(), colptr.data_ptr<I>(),
                                    row_by_src.data_ptr<I>(), eid.data_ptr<I>(), Nd, Ns,
                                    stats.data_ptr<scalar_t>(), d_out.data_ptr<scalar_t>(),
                                    dout_dot_out.data_ptr<scalar_t>(),
                                    dst_term.numel() ? d_dst_term.data_ptr<scalar_t>() : nullptr,
                                    d_src_term.data_ptr<scalar_t>(), d_value.data_ptr<scalar_t>(),
                                    d_edge_score_term.numel() ? d_edge_score_term.data_ptr<scalar_t>() : nullptr,
                                    d_edge_bias.numel() ? d_edge_bias.data_ptr<scalar_t>() : nullptr,
                                    d_edge_value.numel() ? d_edge_value.data_ptr<scalar_t>() : nullptr,
                                    g.data_ptr<scalar_t>(),
                                    has_att ? datt_rows.data_ptr<scalar_t>() : nullptr);
      });
    };
    if (colptr.scalar_type() == torch::kInt) run(int32_t{});
    else run(int64_t{});
  });
  auto datt = has_att ? datt_rows.sum(0) : none();
  return {d_dst_term, d_src_term, d_value, d_edge_score_term, d_edge_bias, d_edge_value, datt};
}

// Edge softmax over CSR rows. scores / y are [E, K] in the caller's edge order;
// perm[k] is the caller's index of CSR position k (empty: the orders coincide).
torch::Tensor edge_softmax_forward(torch::Tensor rowptr, torch::Tensor perm, torch::Tensor scores) {
  TORCH_CHECK(scores.is_contiguous() && rowptr.is_contiguous() && perm.is_contiguous(), "inputs must be contiguous");
  const int64_t Nd = rowptr.size(0) - 1, E = scores.size(0), K = scores.numel() / std::max<int64_t>(E, 1);
  TORCH_CHECK(!perm.numel() || perm.size(0) == E, "perm must have one entry per edge");
  auto y = torch::empty_like(scores);
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "edge_softmax_forward", [&] {
    using T = scalar_t;
    const int64_t* rp = rowptr.data_ptr<int64_t>();
    const int64_t* pm = perm.numel() ? perm.data_ptr<int64_t>() : nullptr;
    const T* s = scores.data_ptr<T>();
    T* out = y.data_ptr<T>();
    at::parallel_for(0, Nd, 256, [&](int64_t begin, int64_t end) {
      std::vector<T> m(K), l(K);
      for (int64_t i = begin; i < end; ++i) {
        std::fill(m.begin(), m.end(), -std::numeric_limits<T>::infinity());
        std::fill(l.begin(), l.end(), T(0));
        for (int64_t k = rp[i]; k < rp[i + 1]; ++k) {
          GA_CHECK_INDEX(pm ? pm[k] : k, E, "edge");
          const T* sr = s + (pm ? pm[k] : k) * K;
          for (int64_t c = 0; c < K; ++c) m[c] = sr[c] > m[c] ? sr[c] : m[c];
        }
        for (int64_t c = 0; c < K; ++c) m[c] = m[c] == -std::numeric_limits<T>::infinity() ? T(0) : m[c];
        for (int64_t k = rp[i]; k < rp[i + 1]; ++k) {
          const int64_t u = pm ? pm[k] : k;
          for (int64_t c = 0; c < K; ++c) {
            const T ex = std::exp(s[u * K + c] - m[c]);
            out[u * K + c] = ex;
            l[c] += ex;
          }
        }
        for (int64_t c = 0; c < K; ++c) l[c] = l[c] == T(0) ? T(0) : T(1) / l[c];  // NaN stays NaN
        for (int64_t k = rp[i]; k < rp[i + 1]; ++k) {
          T* o = out + (pm ? pm[k] : k) * K;
          for (int64_t c = 0; c < K; ++c) o[c] *= l[c];
        }
      }
    });
  });
  return y;
}

// d scores = y * (g - sum_row(g * y)), from the output alone.
torch::Tensor edge_softmax_backward(torch::Tensor rowptr, torch::Tensor perm, torch::Tensor y, torch::Tensor grad) {
  TORCH_CHECK(y.is_contiguous() && grad.is_contiguous(), "inputs must be contiguous");
  TORCH_CHECK(y.sizes() == grad.sizes(), "grad must have the output's shape");
  const int64_t Nd = rowptr.size(0) - 1, E = y.size(0), K = y.numel() / std::max<int64_t>(E, 1);
  TORCH_CHECK(!perm.numel() || perm.size(0) == E, "perm must have one entry per edge");
  auto ds = torch::empty_like(y);
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "edge_softmax_backward", [&] {
    using T = scalar_t;
    const int64_t* rp = rowptr.data_ptr<int64_t>();
    const int64_t* pm = perm.numel() ? perm.data_ptr<int64_t>() : nullptr;
    const T* yp = y.data_ptr<T>();
    const T* gp = grad.data_ptr<T>();
    T* dp = ds.data_ptr<T>();
    at::parallel_for(0, Nd, 256, [&](int64_t begin, int64_t end) {
      std::vector<T> acc(K);
      for (int64_t i = begin; i < end; ++i) {
        std::fill(acc.begin(), acc.end(), T(0));
        for (int64_t k = rp[i]; k < rp[i + 1]; ++k) {
          GA_CHECK_INDEX(pm ? pm[k] : k, E, "edge");
          const int64_t u = (pm ? pm[k] : k) * K;
          for (int64_t c = 0; c < K; ++c) acc[c] += gp[u + c] * yp[u + c];
        }
        for (int64_t k = rp[i]; k < rp[i + 1]; ++k) {
          const int64_t u = (pm ? pm[k] : k) * K;
          for (int64_t c = 0; c < K; ++c) dp[u + c] = yp[u + c] * (gp[u + c] - acc[c]);
        }
      }
    });
  });
  return ds;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("edge_softmax_forward", &edge_softmax_forward, "edge softmax over CSR rows (CPU)");
  m.def("edge_softmax_backward", &edge_softmax_backward, "edge softmax backward from its output (CPU)");
  m.def("forward", &fused_forward, "fused graph attention forward (CPU)");
  m.def("weights", &fused_weights, "normalised attention weights from the saved stats (row max, log normaliser)");
  m.def("backward", &fused_backward, "fused graph attention backward (CPU)");
}
