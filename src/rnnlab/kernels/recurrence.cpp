// rnnlab's fused recurrence (CPU): forward and backward of one layer over T steps, for all six
// cells, plus a one-step multi-layer call for sampling, and IndRNN's element-wise recurrence (at
// the end: it needs none of the GEMM machinery).
//
// The structure follows Appleyard, Kocisky & Blunsom 2016, "Optimizing Performance of Recurrent
// Neural Networks on GPUs" (the cuDNN RNN design), on a CPU:
//   1. the input projections of all T steps are one large GEMM  (T*B, I) @ (I, G) before the loop;
//   2. each step runs only the GEMM(s) that depend on h_{t-1}, written into preallocated buffers;
//   3. the element-wise gate math of a step is one fused, vectorised loop;
//   4. backward walks the steps in reverse computing only the pre-activation gradients dG_t and the
//      carried dh/dc, then forms dW_ih, dW_hh, db and dx as single GEMMs/reductions over all steps.
// Python never runs per step: one call per layer (training) or per character (sampling). On a CPU
// the batch is split over threads for the whole sequence (see split_batch).
//
// Layouts (row-major, T time, B batch, H hidden, I input):
//   x   (T, B, I)   xw  (T, B, Gx) = x @ W_ih^T      out (T, B, H) = h_0 .. h_{T-1} (top of step t)
//   S   (T, B, k*H) what backward needs, per cell:
//          lstm  [i f g o c]     gru  [r z n hn]      mut1 [z r n rh tanh(px)]
//          mut2  [z r n rh]      mut3 [z r n rh tanh(h_prev)]      rnn  (none: h' is in out)
//   dG  (T, B, .)   pre-activation gradients: lstm [i f g o], gru hh-side [r z r*hn] + ih n-block,
//                   mut [z r h] (the order of the MUT `bias`), rnn [a].
// h_prev of step t is h0 for t = 0 and out[t-1] after, so no copy of the h sequence is made:
// dW_hh = dG[1:]^T @ out[:-1] + dG[0]^T @ h0.
//
// Variable lengths (padded batches, packed sequences): the batch is sorted longest first and
// batch_sizes[t] rows are live at step t (a prefix, as in a PackedSequence). Each step's GEMMs and
// gate loops run on the live prefix only; a finished row's outputs stay 0, its final state is
// read at its last step, and in backward its dh/dc pass through the dead steps unchanged.
//
// Zoneout (Krueger et al. 2016): with keep masks m (T, B, H) (1: keep the previous value; a
// constant rate at eval, the expectation), the state a step hands on is m * prev + (1 - m) * new,
// for h and, for the LSTM, separately for c (its own mask). The cell equations run unchanged on
// the zoned previous state; then a pass blends. The LSTM's h candidate is o * tanh(c~) of the
// unzoned c~ = f*c + i*g, as in the paper, so S gains c~ (block 5); the RNN saves its candidate
// h~ (its tanh/relu derivative needs it, out holds the zoned h). Backward splits each carried
// gradient into (1 - m) for the candidate, through the cell, and m straight to the previous step.
//
// `projected` layers take the input projection ready-made: x is then (T, B, Gx [+ H]) = [xw | px]
// (px only for MUT1/MUT2), e.g. rows gathered from a (V, Gx) table E @ W_ih^T when the input is an
// embedding lookup (rnnlab.models.char_lm), and backward returns its gradient instead of dx, dW_ih
// and dW_proj, which the caller's autograd forms from it.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

using at::Tensor;
using c10::optional;

// Must match rnnlab/kernels/fused.py CELL_IDS.
enum Cell : int64_t { kRnnTanh = 0, kRnnRelu = 1, kLstm = 2, kGru = 3, kMut1 = 4, kMut2 = 5, kMut3 = 6 };

// ---------------------------------------------------------------------------------------------
// Element-wise math. float uses a branch-free exp (Cephes' expf polynomial, < 2 ulp) that g++
// vectorises, so a gate loop becomes straight AVX code instead of one libm call per element;
// double (used by gradcheck) keeps libm. Forced inline: a call inside a loop stops vectorisation.
// ---------------------------------------------------------------------------------------------

#define RNNLAB_INLINE inline __attribute__((always_inline))

RNNLAB_INLINE float exp_(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);  // keeps 2^n a normal float; NaN passes through
  float n = std::floor(x * 1.44269504088896341f + 0.5f);
  x -= n * 0.693359375f;
  x -= n * -2.12194440e-4f;
  float z = x * x;
  float y = 1.9875691500e-4f;
  y = y * x + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * z + x + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return y * scale;
}

RNNLAB_INLINE float tanh_(float x) {
  // Cephes tanhf: an odd polynomial near 0 (where 1 - 2/(e^2x + 1) would cancel), else via exp.
  float ax = std::abs(x);
  float z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  float small = p * z * x + x;
  float e = exp_(2.0f * ax);
  float large = std::copysign(1.0f - 2.0f / (e + 1.0f), x);
  return ax < 0.625f ? small : large;
}

RNNLAB_INLINE float sigmoid_(float x) { return 1.0f / (1.0f + exp_(-x)); }
RNNLAB_INLINE double tanh_(double x) { return std::tanh(x); }
RNNLAB_INLINE double sigmoid_(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// Batch rows never interact in a recurrence, so on a CPU the batch is split over threads for the
// whole sequence: each thread runs all T steps on its rows with single-threaded GEMMs and no
// synchronisation, instead of MKL forking and joining twice per step on small GEMMs (which at
// B*H ~ 32x128 roughly halves the step time on 2 cores). Below g_min_rows rows per thread one
// thread runs everything and MKL parallelises each GEMM itself (B = 1 sampling).
int64_t g_min_rows = 8;

template <typename F>
void split_batch(int64_t B, const F& f) {
  const int64_t chunks = std::min<int64_t>(at::get_num_threads(), B / g_min_rows);
  if (chunks <= 1) return f(int64_t(0), B);
  at::parallel_for(0, B, (B + chunks - 1) / chunks, [&](int64_t r0, int64_t r1) {
    at::NoGradGuard no_grad;  // grad mode is thread-local: workers would otherwise record graphs
    f(r0, r1);
  });
}

// out (M, N) = a (M, K) @ w^T for bfloat16 weights w (N, K) and float a, out: sampling with
// reduced-precision weights (Recurrent.step's weight_dtype). A character is bound by the bytes of
// weights it reads, so reading half of them is the speed-up. A bfloat16 is the top half of a
// float's bits, so widening is exact; products and sums are float. Four weight rows at a time:
// four independent accumulator chains keep the FMA units busy (one chain waits on its own
// latency) and each element of a row of `a` is loaded once for the four.
RNNLAB_INLINE float widen(uint16_t bf) {
  const uint32_t bits = static_cast<uint32_t>(bf) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

void mm_nt_bf16(Tensor& out, const Tensor& a, const Tensor& w, int64_t n0, int64_t n1) {
  TORCH_CHECK(a.scalar_type() == at::kFloat && out.scalar_type() == at::kFloat,
              "bfloat16 weights take float inputs");
  TORCH_CHECK(w.is_contiguous() && a.stride(1) == 1 && out.stride(1) == 1,
              "mm_nt_bf16: expected row-major operands");
  const int64_t M = a.size(0), K = a.size(1), as = a.stride(0), os = out.stride(0);
  const float* ap = a.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const uint16_t* wp = reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>());
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) {
    const uint16_t *w0 = wp + n * K, *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K;
    for (int64_t m = 0; m < M; ++m) {
      const float* x = ap + m * as;
      float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
      for (int64_t k = 0; k < K; ++k) {
        const float xk = x[k];
        a0 += widen(w0[k]) * xk;
        a1 += widen(w1[k]) * xk;
        a2 += widen(w2[k]) * xk;
        a3 += widen(w3[k]) * xk;
      }
      float* o = op + m * os + n;
      o[0] = a0, o[1] = a1, o[2] = a2, o[3] = a3;
    }
  }
  for (; n < n1; ++n) {
    const uint16_t* wn = wp + n * K;
    for (int64_t m = 0; m < M; ++m) {
      const float* x = ap + m * as;
      float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
      for (int64_t k = 0; k < K; ++k) acc += widen(wn[k]) * x[k];
      op[m * os + n] = acc;
    }
  }
}

// out = a @ w^T. Sampling (T = 1, few rows) is bound by reading the weights; one core cannot pull
// the memory bandwidth of two, and MKL runs a 1-row GEMV on one, so outside a batch split the
// weight rows are divided among the threads instead.
void mm_nt(Tensor& out, const Tensor& a, const Tensor& w) {
  const int64_t N = w.size(0), threads = at::get_num_threads();
  if (w.scalar_type() == at::kBFloat16) {
    if (at::in_parallel_region() || threads < 2) return mm_nt_bf16(out, a, w, 0, N);
    at::parallel_for(0, N, (N + threads - 1) / threads,
                     [&](int64_t n0, int64_t n1) { mm_nt_bf16(out, a, w, n0, n1); });
    return;
  }
  if (at::in_parallel_region() || threads < 2 || a.size(0) > 64 ||
      N * w.size(1) < (1 << 16)) {
    at::mm_out(out, a, w.t());
    return;
  }
  at::parallel_for(0, N, (N + threads - 1) / threads, [&](int64_t n0, int64_t n1) {
    at::NoGradGuard no_grad;
    Tensor part = out.narrow(1, n0, n1 - n0);
    at::mm_out(part, a, w.narrow(0, n0, n1 - n0).t());
  });
}

// (T, B, n) -> (T*B, n), a view even for a column block of a wider buffer.
inline Tensor flat(const Tensor& t) { return t.reshape({-1, t.size(-1)}); }

// dW (+)= dG^T @ H_prev with H_prev = [h0, out[0 .. T-2]] (see the header).
Tensor grad_hprev(const Tensor& dg, const Tensor& out, const Tensor& h0) {
  const int64_t T = dg.size(0);
  Tensor dw = at::mm(dg[0].t(), h0);
  if (T > 1) dw.addmm_(flat(dg.slice(0, 1)).t(), flat(out.slice(0, 0, T - 1)));
  return dw;
}

struct Dims {
  int64_t T, B, I, H;
};

int64_t saved_width(int64_t cell, bool zoned) {
  switch (cell) {
    case kRnnTanh:
    case kRnnRelu: return zoned ? 1 : 0;  // zoned: [h~]
    case kLstm: return zoned ? 6 : 5;     // zoned: [i f g o c c~]
    case kGru: return 4;
    case kMut1: return 5;
    case kMut2: return 4;
    case kMut3: return 5;
    default: return 0;
  }
}

// ---------------------------------------------------------------------------------------------
// Forward. x, h0, c0 contiguous; xw (T,B,Gx); px (T,B,H) the MUT1/MUT2 "x in a hidden-sized sum"
// (x itself or W_proj x); S has T slots when saving for backward, else 2 used alternately.
// ---------------------------------------------------------------------------------------------

template <typename scalar_t>
void forward_impl(int64_t cell, const Dims& d, const Tensor& xw, const Tensor& px, const Tensor& h0,
                  const Tensor& c0, const Tensor& w_hh, const Tensor& b1, const Tensor& b2,
                  Tensor& out, Tensor& S, bool save, const int64_t* live, int64_t r0,
                  int64_t r1, const scalar_t* zh, const scalar_t* zc) {
  // Rows r0..r1-1 of the batch; `b` below is a global row, `b - r0` a row of the local buffers.
  // live: batch sizes per step (rows r0..end-1 are live at step t), or null for all rows.
  const int64_t T = d.T, B = d.B, H = d.H, n_rows = r1 - r0;
  // xw and px may be column blocks of one [xw | px] buffer (projected input): index by strides.
  const int64_t xs0 = xw.stride(0), Gx = xw.stride(1);
  const int64_t ps0 = px.defined() ? px.stride(0) : 0, ps1 = px.defined() ? px.stride(1) : 0;
  const int64_t K = saved_width(cell, zh != nullptr) * H;  // row width of S
  const int64_t ghw = (cell == kLstm ? 4 : cell == kGru ? 3 : cell == kMut2 ? 2 : 1) * H;
  Tensor gh = at::empty({n_rows, ghw}, out.options());  // recurrent GEMM output
  Tensor gh2 = at::empty({n_rows, H}, out.options());   // MUT: W_hh (r*h); MUT3: W_hr h in gh3
  Tensor gh3 = cell == kMut3 ? at::empty({n_rows, H}, out.options()) : Tensor();
  int64_t end = r1;  // live rows this step: r0 .. end-1
  auto rows = [&](const Tensor& t) { return t.narrow(0, r0, end - r0); };
  auto local = [&](const Tensor& t) { return t.narrow(0, 0, end - r0); };
  auto each_row = [&](const auto& f) {
    for (int64_t b = r0; b < end; ++b) f(b);
  };
  Tensor w_first = cell == kMut1 || cell == kMut3 ? w_hh.narrow(0, 0, H)
                   : cell == kMut2                ? w_hh.narrow(0, 0, 2 * H)
                                                  : w_hh;
  Tensor w_hr3 = cell == kMut3 ? w_hh.narrow(0, H, H) : Tensor();
  Tensor w_last = cell >= kMut1 ? w_hh.narrow(0, w_hh.size(0) - H, H) : Tensor();

  const scalar_t* bias1 = b1.data_ptr<scalar_t>();
  const scalar_t* bias2 = b2.defined() ? b2.data_ptr<scalar_t>() : nullptr;
  scalar_t* o = out.data_ptr<scalar_t>();
  scalar_t* s = S.defined() ? S.data_ptr<scalar_t>() : nullptr;
  const scalar_t* xwp = xw.data_ptr<scalar_t>();
  const scalar_t* pxp = px.defined() ? px.data_ptr<scalar_t>() : nullptr;
  const scalar_t* g = gh.data_ptr<scalar_t>();
  const scalar_t* g2 = gh2.data_ptr<scalar_t>();

  for (int64_t t = 0; t < T; ++t) {
    if (live) end = std::min(r1, std::max(r0, live[t]));
    if (end == r0) break;  // sorted longest first: no row of this chunk lives any longer
    const bool every = save || live;  // S keeps every step (else two slots, alternately)
    const int64_t slot = every ? t : t % 2, prev_slot = every ? t - 1 : (t + 1) % 2;
    Tensor h_prev = rows(t == 0 ? h0 : out[t - 1]);
    const scalar_t* hp = (t == 0 ? h0 : out[t - 1]).data_ptr<scalar_t>();
    const scalar_t* x_t = xwp + t * xs0;
    scalar_t* h_t = o + t * B * H;
    scalar_t* s_t = s ? s + slot * B * K : nullptr;

    if (cell == kMut3) {
      // tanh(h_prev) feeds W_hz: store it in S's last block, then both GEMMs read S/h_prev.
      each_row([&](int64_t b) {
        scalar_t* th = s_t + b * K + 4 * H;
        const scalar_t* hb = hp + b * H;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) th[j] = tanh_(hb[j]);
      });
      Tensor gh_ = local(gh), gh3_ = local(gh3);
      mm_nt(gh_, rows(S[slot]).narrow(1, 4 * H, H), w_first);
      mm_nt(gh3_, h_prev, w_hr3);
    } else {
      Tensor gh_ = local(gh);
      mm_nt(gh_, h_prev, w_first);
    }

    switch (cell) {
      case kRnnTanh:
      case kRnnRelu: {
        const bool relu = cell == kRnnRelu;
        each_row([&](int64_t b) {
          const scalar_t *xb = x_t + b * Gx, *gb = g + (b - r0) * H;
          scalar_t* hb = h_t + b * H;
          if (relu) {
#pragma omp simd
            for (int64_t j = 0; j < H; ++j) hb[j] = std::max(xb[j] + gb[j] + bias1[j], scalar_t(0));
          } else {
#pragma omp simd
            for (int64_t j = 0; j < H; ++j) hb[j] = tanh_(xb[j] + gb[j] + bias1[j]);
          }
        });
        break;
      }
      case kLstm: {
        const scalar_t* c_prev = t == 0 ? c0.data_ptr<scalar_t>() : s + prev_slot * B * K + 4 * H;
        const int64_t cs = t == 0 ? H : K;  // row stride of c_prev
        each_row([&](int64_t b) {
          const scalar_t *xb = x_t + b * Gx, *gb = g + (b - r0) * 4 * H, *cp = c_prev + b * cs;
          scalar_t *sb = s_t + b * K, *hb = h_t + b * H;
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) {
            scalar_t i = sigmoid_(xb[j] + gb[j] + bias1[j]);
            scalar_t f = sigmoid_(xb[H + j] + gb[H + j] + bias1[H + j]);
            scalar_t gg = tanh_(xb[2 * H + j] + gb[2 * H + j] + bias1[2 * H + j]);
            scalar_t oo = sigmoid_(xb[3 * H + j] + gb[3 * H + j] + bias1[3 * H + j]);
            scalar_t c = f * cp[j] + i * gg;
            sb[j] = i, sb[H + j] = f, sb[2 * H + j] = gg, sb[3 * H + j] = oo, sb[4 * H + j] = c;
            hb[j] = oo * tanh_(c);
          }
        });
        break;
      }
      case kGru: {
        each_row([&](int64_t b) {
          const scalar_t *xb = x_t + b * Gx, *gb = g + (b - r0) * 3 * H, *hpb = hp + b * H;
          scalar_t *sb = s_t + b * K, *hb = h_t + b * H;
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) {
            scalar_t r = sigmoid_(xb[j] + bias1[j] + gb[j] + bias2[j]);
            scalar_t z = sigmoid_(xb[H + j] + bias1[H + j] + gb[H + j] + bias2[H + j]);
            scalar_t hn = gb[2 * H + j] + bias2[2 * H + j];
            scalar_t n = tanh_(xb[2 * H + j] + bias1[2 * H + j] + r * hn);
            sb[j] = r, sb[H + j] = z, sb[2 * H + j] = n, sb[3 * H + j] = hn;
            hb[j] = (1 - z) * n + z * hpb[j];
          }
        });
        break;
      }
      default: {  // MUT1-3: z, r and r*h first; then W_hh (r*h); then n and h'.
        const scalar_t* g3 = cell == kMut3 ? gh3.data_ptr<scalar_t>() : nullptr;
        const int64_t cell_ = cell;
        each_row([&](int64_t b) {
          const scalar_t *xb = x_t + b * Gx, *hpb = hp + b * H;
          const scalar_t* pb = pxp ? pxp + t * ps0 + b * ps1 : nullptr;
          scalar_t* sb = s_t + b * K;
          if (cell_ == kMut1) {  // xw = [x_z, x_r]; gh = W_hr h
            const scalar_t* gb = g + (b - r0) * H;
#pragma omp simd
            for (int64_t j = 0; j < H; ++j) {
              scalar_t z = sigmoid_(xb[j] + bias1[j]);
              scalar_t r = sigmoid_(xb[H + j] + gb[j] + bias1[H + j]);
              sb[j] = z, sb[H + j] = r, sb[3 * H + j] = r * hpb[j];
            }
          } else if (cell_ == kMut2) {  // xw = [x_z, x_h]; gh = [W_hz h, W_hr h]; r uses px
            const scalar_t* gb = g + (b - r0) * 2 * H;
#pragma omp simd
            for (int64_t j = 0; j < H; ++j) {
              scalar_t z = sigmoid_(xb[j] + gb[j] + bias1[j]);
              scalar_t r = sigmoid_(pb[j] + gb[H + j] + bias1[H + j]);
              sb[j] = z, sb[H + j] = r, sb[3 * H + j] = r * hpb[j];
            }
          } else {  // MUT3: xw = [x_z, x_r, x_h]; gh = W_hz tanh(h); gh3 = W_hr h
            const scalar_t *gb = g + (b - r0) * H, *g3b = g3 + (b - r0) * H;
#pragma omp simd
            for (int64_t j = 0; j < H; ++j) {
              scalar_t z = sigmoid_(xb[j] + gb[j] + bias1[j]);
              scalar_t r = sigmoid_(xb[H + j] + g3b[j] + bias1[H + j]);
              sb[j] = z, sb[H + j] = r, sb[3 * H + j] = r * hpb[j];
            }
          }
        });
        Tensor gh2_ = local(gh2);
        mm_nt(gh2_, rows(S[slot]).narrow(1, 3 * H, H), w_last);
        const int64_t xh = cell == kMut3 ? 2 * H : H;  // column of W_xh x in xw (MUT2/3)
        each_row([&](int64_t b) {
          const scalar_t *xb = x_t + b * Gx, *hpb = hp + b * H, *g2b = g2 + (b - r0) * H;
          const scalar_t* pb = pxp ? pxp + t * ps0 + b * ps1 : nullptr;
          scalar_t *sb = s_t + b * K, *hb = h_t + b * H;
          const scalar_t* bh = bias1 + 2 * H;
          if (cell_ == kMut1) {  // n = tanh(W_hh(r*h) + tanh(px) + b_h)
#pragma omp simd
            for (int64_t j = 0; j < H; ++j) {
              scalar_t tp = tanh_(pb[j]);
              scalar_t n = tanh_(g2b[j] + tp + bh[j]);
              scalar_t z = sb[j];
              sb[2 * H + j] = n, sb[4 * H + j] = tp;
              hb[j] = n * z + hpb[j] * (1 - z);
            }
          } else {  // n = tanh(W_hh(r*h) + W_xh x + b_h)
#pragma omp simd
            for (int64_t j = 0; j < H; ++j) {
              scalar_t n = tanh_(g2b[j] + xb[xh + j] + bh[j]);
              scalar_t z = sb[j];
              sb[2 * H + j] = n;
              hb[j] = n * z + hpb[j] * (1 - z);
            }
          }
        });
      }
    }
    if (zh) {  // zoneout: blend the candidates just written with the previous state
      const bool lstm = cell == kLstm, rnn = cell == kRnnTanh || cell == kRnnRelu;
      const scalar_t* c_prev = !lstm ? nullptr
                               : t == 0 ? c0.data_ptr<scalar_t>()
                                        : s + prev_slot * B * K + 4 * H;
      const int64_t cs = t == 0 ? H : K;
      each_row([&](int64_t b) {
        const scalar_t *mh = zh + (t * B + b) * H, *hpb = hp + b * H;
        scalar_t *hb = h_t + b * H, *sb = s_t + b * K;
        if (rnn) {
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) sb[j] = hb[j];
        }
        if (lstm) {
          const scalar_t *mc = zc + (t * B + b) * H, *cp = c_prev + b * cs;
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) {
            scalar_t cc = sb[4 * H + j];
            sb[5 * H + j] = cc;
            sb[4 * H + j] = mc[j] * cp[j] + (1 - mc[j]) * cc;
          }
        }
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) hb[j] = mh[j] * hpb[j] + (1 - mh[j]) * hb[j];
      });
    }
  }
}

struct Weights {
  Tensor w_ih, w_hh, b1, b2, w_proj;  // b1: combined/ih bias or MUT `bias`; b2: GRU bias_hh
};

// Biases as the loops read them: rnn/lstm add b_ih + b_hh once; gru keeps both (b_hn sits inside
// r * (W_hn h + b_hn)); MUT cells have one `bias`. Missing biases (bias=False) become zeros.
// w_ih is absent for a projected layer.
Weights prepare(int64_t cell, const optional<Tensor>& w_ih, const Tensor& w_hh,
                const optional<Tensor>& b_a, const optional<Tensor>& b_b,
                const optional<Tensor>& w_proj) {
  Weights w{w_ih.has_value() ? w_ih->contiguous() : Tensor(), w_hh.contiguous(), Tensor(),
            Tensor(), Tensor()};
  const int64_t G = w_hh.size(0);  // == rows of w_ih for rnn/lstm/gru
  if (cell >= kMut1) {
    w.b1 = b_a->contiguous();
  } else if (!b_a.has_value()) {
    // bfloat16 weights (sampling) keep float biases and state
    const auto bias_options =
        w_hh.options().dtype(w_hh.scalar_type() == at::kBFloat16 ? at::kFloat : w_hh.scalar_type());
    w.b1 = at::zeros({G}, bias_options);
    if (cell == kGru) w.b2 = at::zeros({G}, bias_options);
  } else if (cell == kGru) {
    w.b1 = b_a->contiguous(), w.b2 = b_b->contiguous();
  } else {
    w.b1 = (*b_a + *b_b).contiguous();
  }
  if (w_proj.has_value()) w.w_proj = w_proj->contiguous();
  return w;
}

bool uses_px(int64_t cell) { return cell == kMut1 || cell == kMut2; }

// Columns of xw = x @ W_ih^T: the H-blocks of weight_ih.
int64_t gates_x(int64_t cell, int64_t H) {
  switch (cell) {
    case kLstm: return 4 * H;
    case kGru: case kMut3: return 3 * H;
    case kMut1: case kMut2: return 2 * H;
    default: return H;
  }
}

// Returns {out (T,B,H), h_T (B,H), c_T (B,H) or undefined, S or undefined}.
std::vector<Tensor> forward_layer(int64_t cell, const Tensor& x_in, const Tensor& h0_in,
                                  const optional<Tensor>& c0_in, const Weights& w, bool save,
                                  bool projected = false,
                                  const optional<Tensor>& batch_sizes = c10::nullopt,
                                  const optional<Tensor>& zoneout_h = c10::nullopt,
                                  const optional<Tensor>& zoneout_c = c10::nullopt) {
  const Tensor x = x_in.contiguous(), h0 = h0_in.contiguous();
  const Dims d{x.size(0), x.size(1), x.size(2), w.w_hh.size(1)};
  const bool zoned = zoneout_h.has_value();
  const Tensor zh = zoned ? zoneout_h->contiguous() : Tensor();
  const Tensor zc = zoned && cell == kLstm ? zoneout_c.value().contiguous() : Tensor();
  for (const Tensor& m : {zh, zc}) {
    TORCH_CHECK(!m.defined() || (m.sizes() == at::IntArrayRef{d.T, d.B, d.H} &&
                                 m.scalar_type() == h0.scalar_type()),
                "layer_forward: zoneout masks must be (T, B, H) in the state's dtype");
  }
  const int64_t Gx = gates_x(cell, d.H);
  Tensor xw, px;
  if (projected) {  // x = [xw | px], see the header
    TORCH_CHECK(d.I == Gx + (uses_px(cell) ? d.H : 0), "layer_forward: projected input has ",
                d.I, " columns, expected ", Gx + (uses_px(cell) ? d.H : 0));
    xw = x.narrow(2, 0, Gx);
    if (uses_px(cell)) px = x.narrow(2, Gx, d.H);
  } else {
    // Appleyard et al. 2016: the input projections of all steps in one large GEMM.
    xw = at::empty({d.T * d.B, Gx}, x.options());
    mm_nt(xw, x.view({d.T * d.B, d.I}), w.w_ih);
    xw = xw.view({d.T, d.B, Gx});
    px = uses_px(cell) ? x : Tensor();
  }
  const Tensor x2 = x.view({d.T * d.B, d.I});
  if (!projected && uses_px(cell) && w.w_proj.defined()) {
    px = at::empty({d.T * d.B, d.H}, x.options());
    mm_nt(px, x2, w.w_proj);
    px = px.view({d.T, d.B, d.H});
  }
  // With lengths, dead rows are never written: outputs and saved gates must read as 0 there, and
  // every step's S is kept so a row's final c can be read at its own last step.
  const Tensor live = batch_sizes.has_value() ? batch_sizes->to(at::kLong).contiguous() : Tensor();
  const bool ragged = live.defined();
  TORCH_CHECK(!ragged || live.numel() == d.T, "layer_forward: batch_sizes must have T entries");
  const auto alloc = [&](at::IntArrayRef shape) {
    return ragged ? at::zeros(shape, x.options()) : at::empty(shape, x.options());
  };
  Tensor out = alloc({d.T, d.B, d.H});
  const int64_t K = saved_width(cell, zoned) * d.H;
  Tensor S = K ? alloc({save || ragged ? d.T : 2, d.B, K}) : Tensor();
  Tensor c0 = cell == kLstm ? c0_in->contiguous() : Tensor();
  const int64_t* live_p = ragged ? live.data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnnlab_forward", [&] {
    auto rows = [&](int64_t r0, int64_t r1) {
      forward_impl<scalar_t>(cell, d, xw, px, h0, c0, w.w_hh, w.b1, w.b2, out, S, save, live_p,
                             r0, r1, zoned ? zh.data_ptr<scalar_t>() : nullptr,
                             zc.defined() ? zc.data_ptr<scalar_t>() : nullptr);
    };
    // One step (sampling) splits each GEMM's weights instead (mm_nt): every thread reads half.
    d.T > 1 ? split_batch(d.B, rows) : rows(0, d.B);
  });
  Tensor hT, cT;
  if (ragged) {  // row b's final state is at its last live step
    hT = at::empty_like(h0);
    if (cell == kLstm) cT = at::empty_like(h0);
    for (int64_t b = 0; b < d.B; ++b) {
      int64_t last = 0;
      while (last + 1 < d.T && live_p[last + 1] > b) ++last;
      hT[b].copy_(out[last][b]);
      if (cell == kLstm) cT[b].copy_(S[last][b].narrow(0, 4 * d.H, d.H));
    }
  } else {
    hT = out[d.T - 1].clone();
    if (cell == kLstm) cT = S[save ? d.T - 1 : (d.T - 1) % 2].narrow(1, 4 * d.H, d.H).contiguous();
  }
  return {out, hT, cT, save ? S : Tensor()};
}

std::vector<Tensor> layer_forward(int64_t cell, const Tensor& x, const Tensor& h0,
                                  const optional<Tensor>& c0, const optional<Tensor>& w_ih,
                                  const Tensor& w_hh, const optional<Tensor>& b_a,
                                  const optional<Tensor>& b_b, const optional<Tensor>& w_proj,
                                  bool save, bool projected,
                                  const optional<Tensor>& batch_sizes,
                                  const optional<Tensor>& zoneout_h,
                                  const optional<Tensor>& zoneout_c) {
  TORCH_CHECK(projected || w_ih.has_value(), "layer_forward: weight_ih is required");
  return forward_layer(cell, x, h0, c0, prepare(cell, w_ih, w_hh, b_a, b_b, w_proj), save,
                       projected, batch_sizes, zoneout_h, zoneout_c);
}

// ---------------------------------------------------------------------------------------------
// Backward: a reverse loop producing dG and the carried dh (and dc), then all-steps GEMMs.
// ---------------------------------------------------------------------------------------------

template <typename scalar_t>
void backward_loop(int64_t cell, const Dims& d, const Tensor& gout, const Tensor& out,
                   const Tensor& h0, const Tensor& c0, const Tensor& S, const Tensor& w_hh,
                   Tensor& dh, Tensor& dc, Tensor& dG, Tensor& dA, const int64_t* live,
                   int64_t r0, int64_t r1, const scalar_t* zh, const scalar_t* zc,
                   scalar_t* zbuf) {
  // zbuf (zoneout only): (3, B, H) global rows: the candidate's share of dh_t, and the shares of
  // dh_t and dc_t that go straight to the previous step.
  // Rows r0..r1-1 of the batch (see split_batch); tmp/tmp2 are local, indexed by b - r0.
  // live as in forward_impl: a dead row's dG stays 0 and its dh/dc pass through unchanged.
  const int64_t T = d.T, B = d.B, H = d.H, n_rows = r1 - r0;
  int64_t end = r1;
  auto rows = [&](const Tensor& t) { return t.narrow(0, r0, end - r0); };
  auto local = [&](const Tensor& t) { return t.narrow(0, 0, end - r0); };
  auto each_row = [&](const auto& f) {
    for (int64_t b = r0; b < end; ++b) f(b);
  };
  const int64_t K = saved_width(cell, zh != nullptr) * H, GW = dG.size(2);
  const int64_t cblk = zh != nullptr ? 5 : 4;  // the LSTM's c~ (tanh'd into h~) in S
  scalar_t *gz = zbuf, *carry_h = zbuf ? zbuf + B * H : nullptr;
  scalar_t* carry_c = zbuf ? zbuf + 2 * B * H : nullptr;
  const scalar_t* go = gout.data_ptr<scalar_t>();
  const scalar_t* o = out.data_ptr<scalar_t>();
  const scalar_t* s = S.defined() ? S.data_ptr<scalar_t>() : nullptr;
  scalar_t* dgp = dG.data_ptr<scalar_t>();
  scalar_t* dap = dA.defined() ? dA.data_ptr<scalar_t>() : nullptr;
  scalar_t* dhp = dh.data_ptr<scalar_t>();
  scalar_t* dcp = dc.defined() ? dc.data_ptr<scalar_t>() : nullptr;
  Tensor tmp = at::empty({n_rows, H}, dh.options());   // MUT: dL/d(r*h)
  Tensor tmp2 = at::empty({n_rows, H}, dh.options());  // MUT3: dL/d tanh(h_prev)
  const scalar_t *tp1 = tmp.data_ptr<scalar_t>(), *tp2 = tmp2.data_ptr<scalar_t>();
  Tensor w_last = cell >= kMut1 ? w_hh.narrow(0, w_hh.size(0) - H, H) : Tensor();

  for (int64_t t = T - 1; t >= 0; --t) {
    if (live) end = std::min(r1, std::max(r0, live[t]));
    if (end == r0) continue;  // no row of this chunk is live yet (walking backwards)
    Tensor dh_rows = rows(dh);
    const scalar_t* hp = t == 0 ? h0.data_ptr<scalar_t>() : o + (t - 1) * B * H;
    const scalar_t* go_t = go + t * B * H;
    const scalar_t* h_t = o + t * B * H;
    const scalar_t* s_t = s ? s + t * B * K : nullptr;
    scalar_t* dg_t = dgp + t * B * GW;
    if (zh) {  // zoneout: (1 - m) of dh_t reaches the candidate, m goes to h_{t-1} (same for c)
      each_row([&](int64_t b) {
        const scalar_t *mh = zh + (t * B + b) * H, *gb = go_t + b * H;
        scalar_t *dhb = dhp + b * H, *gzb = gz + b * H, *chb = carry_h + b * H;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          scalar_t total = dhb[j] + gb[j];
          gzb[j] = (1 - mh[j]) * total, chb[j] = mh[j] * total, dhb[j] = 0;
        }
        if (cell == kLstm) {
          const scalar_t* mc = zc + (t * B + b) * H;
          scalar_t *dcb = dcp + b * H, *ccb = carry_c + b * H;
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) ccb[j] = mc[j] * dcb[j], dcb[j] = (1 - mc[j]) * dcb[j];
        }
      });
      go_t = gz;
    }
    // The RNN's derivative reads its output h~: out[t] itself, or with zoneout S's copy.
    const scalar_t* hc_t = zh && (cell == kRnnTanh || cell == kRnnRelu) ? s_t : h_t;
    switch (cell) {
      case kRnnTanh:
      case kRnnRelu: {
        const bool relu = cell == kRnnRelu;
        each_row([&](int64_t b) {
          const scalar_t *gb = go_t + b * H, *hb = hc_t + b * H;
          const scalar_t* dhb = dhp + b * H;
          scalar_t* da = dg_t + b * GW;
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) {
            scalar_t dht = dhb[j] + gb[j];
            da[j] = relu ? (hb[j] > 0 ? dht : scalar_t(0)) : dht * (1 - hb[j] * hb[j]);
          }
        });
        at::mm_out(dh_rows, rows(dG[t]), w_hh);
        break;
      }
      case kLstm: {
        const scalar_t* c_prev = t == 0 ? c0.data_ptr<scalar_t>() : s + (t - 1) * B * K + 4 * H;
        const int64_t cs = t == 0 ? H : K;
        each_row([&](int64_t b) {
          const scalar_t *gb = go_t + b * H, *sb = s_t + b * K, *cp = c_prev + b * cs;
          scalar_t *dhb = dhp + b * H, *dcb = dcp + b * H, *da = dg_t + b * GW;
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) {
            scalar_t i = sb[j], f = sb[H + j], g = sb[2 * H + j], oo = sb[3 * H + j];
            scalar_t tc = tanh_(sb[cblk * H + j]);
            scalar_t dht = dhb[j] + gb[j];
            scalar_t dct = dcb[j] + dht * oo * (1 - tc * tc);
            da[j] = dct * g * i * (1 - i);
            da[H + j] = dct * cp[j] * f * (1 - f);
            da[2 * H + j] = dct * i * (1 - g * g);
            da[3 * H + j] = dht * tc * oo * (1 - oo);
            dcb[j] = dct * f;
          }
        });
        at::mm_out(dh_rows, rows(dG[t]), w_hh);
        break;
      }
      case kGru: {
        scalar_t* dan_t = dap + t * B * H;
        each_row([&](int64_t b) {
          const scalar_t *gb = go_t + b * H, *sb = s_t + b * K, *hpb = hp + b * H;
          scalar_t *dhb = dhp + b * H, *dg = dg_t + b * GW, *dan = dan_t + b * H;
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) {
            scalar_t r = sb[j], z = sb[H + j], n = sb[2 * H + j], hn = sb[3 * H + j];
            scalar_t dht = dhb[j] + gb[j];
            scalar_t an = dht * (1 - z) * (1 - n * n);
            dg[j] = an * hn * r * (1 - r);
            dg[H + j] = dht * (hpb[j] - n) * z * (1 - z);
            dg[2 * H + j] = an * r;
            dan[j] = an;
            dhb[j] = dht * z;
          }
        });
        dh_rows.addmm_(rows(dG[t]), w_hh);
        break;
      }
      default: {  // MUT1-3, dG = [z r h]
        const int64_t cell_ = cell;
        each_row([&](int64_t b) {
          const scalar_t *gb = go_t + b * H, *sb = s_t + b * K, *hpb = hp + b * H;
          scalar_t *dhb = dhp + b * H, *dg = dg_t + b * GW;
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) {
            scalar_t z = sb[j], n = sb[2 * H + j];
            scalar_t dht = dhb[j] + gb[j];
            dg[j] = dht * (n - hpb[j]) * z * (1 - z);
            dg[2 * H + j] = dht * z * (1 - n * n);
            dhb[j] = dht * (1 - z);
          }
          if (cell_ == kMut1) {  // dL/d px = dan * (1 - tanh(px)^2), kept for dx and dW_proj
            scalar_t* dpx = dap + (t * B + b) * H;
#pragma omp simd
            for (int64_t j = 0; j < H; ++j) {
              scalar_t tp = sb[4 * H + j];
              dpx[j] = dg[2 * H + j] * (1 - tp * tp);
            }
          }
        });
        Tensor dG_t = rows(dG[t]), tmp_ = local(tmp), tmp2_ = local(tmp2);
        at::mm_out(tmp_, dG_t.narrow(1, 2 * H, H), w_last);  // d(r*h) = dan @ W_hh
        if (cell == kMut3) at::mm_out(tmp2_, dG_t.narrow(1, 0, H), w_hh.narrow(0, 0, H));
        each_row([&](int64_t b) {
          const scalar_t *sb = s_t + b * K, *hpb = hp + b * H, *drh = tp1 + (b - r0) * H;
          scalar_t *dhb = dhp + b * H, *dg = dg_t + b * GW;
          const scalar_t* dth = tp2 + (b - r0) * H;
          if (cell_ == kMut3) {
#pragma omp simd
            for (int64_t j = 0; j < H; ++j) {
              scalar_t r = sb[H + j], th = sb[4 * H + j];
              dg[H + j] = drh[j] * hpb[j] * r * (1 - r);
              dhb[j] += drh[j] * r + dth[j] * (1 - th * th);
            }
          } else {
#pragma omp simd
            for (int64_t j = 0; j < H; ++j) {
              scalar_t r = sb[H + j];
              dg[H + j] = drh[j] * hpb[j] * r * (1 - r);
              dhb[j] += drh[j] * r;
            }
          }
        });
        if (cell == kMut1) dh_rows.addmm_(dG_t.narrow(1, H, H), w_hh.narrow(0, 0, H));
        if (cell == kMut2) dh_rows.addmm_(dG_t.narrow(1, 0, 2 * H), w_hh.narrow(0, 0, 2 * H));
        if (cell == kMut3) dh_rows.addmm_(dG_t.narrow(1, H, H), w_hh.narrow(0, H, H));
      }
    }
    if (zh) {
      each_row([&](int64_t b) {
        scalar_t *dhb = dhp + b * H, *chb = carry_h + b * H;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) dhb[j] += chb[j];
        if (cell == kLstm) {
          scalar_t *dcb = dcp + b * H, *ccb = carry_c + b * H;
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) dcb[j] += ccb[j];
        }
      });
    }
  }
}

// Returns {dx, dh0, dc0, dw_ih, dw_hh, db_a, db_b, dw_proj}; undefined where not applicable.
// projected: x, w_ih and w_proj are not needed (pass None) and dx is the gradient of [xw | px].
std::vector<Tensor> layer_backward(int64_t cell, const optional<Tensor>& grad_out,
                                   const optional<Tensor>& grad_hT, const optional<Tensor>& grad_cT,
                                   const optional<Tensor>& x_in, const Tensor& h0_in,
                                   const optional<Tensor>& c0_in, const Tensor& out,
                                   const optional<Tensor>& S_in, const optional<Tensor>& w_ih_in,
                                   const Tensor& w_hh_in, const optional<Tensor>& b_a,
                                   const optional<Tensor>& b_b, const optional<Tensor>& w_proj_in,
                                   bool need_dx, bool projected,
                                   const optional<Tensor>& batch_sizes,
                                   const optional<Tensor>& zoneout_h,
                                   const optional<Tensor>& zoneout_c) {
  TORCH_CHECK(projected || (x_in.has_value() && w_ih_in.has_value()),
              "layer_backward: x and weight_ih are required");
  const Tensor x = projected ? Tensor() : x_in->contiguous(), h0 = h0_in.contiguous();
  const Tensor w_ih = projected ? Tensor() : w_ih_in->contiguous(), w_hh = w_hh_in.contiguous();
  const Dims d{out.size(0), out.size(1), projected ? 0 : x.size(2), w_hh.size(1)};
  const int64_t T = d.T, B = d.B, H = d.H;
  const Tensor gout = grad_out.has_value() ? grad_out->contiguous() : at::zeros_like(out);
  Tensor dh = grad_hT.has_value() ? grad_hT->clone().contiguous() : at::zeros_like(h0);
  Tensor c0 = cell == kLstm ? c0_in->contiguous() : Tensor();
  Tensor dc;
  if (cell == kLstm) dc = grad_cT.has_value() ? grad_cT->clone().contiguous() : at::zeros_like(h0);
  const Tensor S = S_in.has_value() ? *S_in : Tensor();

  // dG: lstm 4H, gru 3H (hh side: [r, z, r*hn]), mut 3H [z r h], rnn H.
  // dA: gru's n-block of the ih side (dan) / mut1's dL/d px; (T,B,H).
  const int64_t GW = cell == kLstm ? 4 * H : (cell == kGru || cell >= kMut1) ? 3 * H : H;
  const Tensor live = batch_sizes.has_value() ? batch_sizes->to(at::kLong).contiguous() : Tensor();
  const int64_t* live_p = live.defined() ? live.data_ptr<int64_t>() : nullptr;
  const auto alloc = [&](at::IntArrayRef shape) {  // dead rows' gradients are never written
    return live_p ? at::zeros(shape, out.options()) : at::empty(shape, out.options());
  };
  Tensor dG = alloc({T, B, GW});
  Tensor dA = cell == kGru || cell == kMut1 ? alloc({T, B, H}) : Tensor();
  const bool zoned = zoneout_h.has_value();
  const Tensor zh = zoned ? zoneout_h->contiguous() : Tensor();
  const Tensor zc = zoned && cell == kLstm ? zoneout_c.value().contiguous() : Tensor();
  Tensor zbuf = zoned ? at::empty({3, B, H}, out.options()) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "rnnlab_backward", [&] {
    split_batch(B, [&](int64_t r0, int64_t r1) {
      backward_loop<scalar_t>(cell, d, gout, out, h0, c0, S, w_hh, dh, dc, dG, dA, live_p, r0,
                              r1, zoned ? zh.data_ptr<scalar_t>() : nullptr,
                              zc.defined() ? zc.data_ptr<scalar_t>() : nullptr,
                              zoned ? zbuf.data_ptr<scalar_t>() : nullptr);
    });
  });

  // All-steps GEMMs (Appleyard et al. 2016): weights' gradients and dx from dG in one go each.
  const Tensor x2 = projected ? Tensor() : x.view({T * B, d.I});
  const bool has_proj = w_proj_in.has_value();
  const Tensor w_proj = has_proj ? w_proj_in->contiguous() : Tensor();
  Tensor dx, dw_ih, dw_hh, db_a, db_b, dw_proj;
  auto blk = [&](const Tensor& t, int64_t k) { return t.narrow(2, k * H, H); };
  auto bsum = [](const Tensor& t) { return t.sum(at::IntArrayRef{0, 1}); };
  const bool has_bias = b_a.has_value();
  // projected: dx is d[xw | px] (the header), and there is no dW_ih / dW_proj to form here.
  const bool want_dx = need_dx && !projected;
  switch (cell) {
    case kRnnTanh:
    case kRnnRelu:
    case kLstm: {
      if (!projected) dw_ih = at::mm(flat(dG).t(), x2);
      dw_hh = grad_hprev(dG, out, h0);
      if (has_bias) db_a = bsum(dG), db_b = db_a.clone();
      if (want_dx) dx = at::mm(flat(dG), w_ih);
      if (projected && need_dx) dx = dG;
      break;
    }
    case kGru: {
      const Tensor drz = dG.narrow(2, 0, 2 * H);
      if (!projected) dw_ih = at::cat({at::mm(flat(drz).t(), x2), at::mm(flat(dA).t(), x2)});
      dw_hh = grad_hprev(dG, out, h0);
      if (has_bias) db_b = bsum(dG), db_a = at::cat({db_b.narrow(0, 0, 2 * H), bsum(dA)});
      if (want_dx) {
        dx = at::mm(flat(drz), w_ih.narrow(0, 0, 2 * H));
        dx.addmm_(flat(dA), w_ih.narrow(0, 2 * H, H));
      }
      if (projected && need_dx) dx = at::cat({drz, dA}, 2);
      break;
    }
    default: {  // MUT: dG = [z r h]; S = [z r n rh (tanh px | tanh h_prev)]
      const Tensor RH = blk(S, 3);
      const Tensor dz = blk(dG, 0), dr = blk(dG, 1), dn = blk(dG, 2);
      db_a = bsum(dG);
      if (cell == kMut1) {
        const Tensor dzr = dG.narrow(2, 0, 2 * H);
        dw_hh = at::cat({grad_hprev(dr, out, h0), at::mm(flat(dn).t(), flat(RH))});
        if (projected) {
          if (need_dx) dx = at::cat({dzr, dA}, 2);
          break;
        }
        dw_ih = at::mm(flat(dzr).t(), x2);
        if (has_proj) dw_proj = at::mm(flat(dA).t(), x2);
        if (need_dx) {
          dx = has_proj ? at::mm(flat(dA), w_proj) : flat(dA).clone();
          dx.addmm_(flat(dzr), w_ih);
        }
      } else if (cell == kMut2) {
        dw_hh = at::cat({grad_hprev(dG.narrow(2, 0, 2 * H), out, h0),
                         at::mm(flat(dn).t(), flat(RH))});
        if (projected) {
          if (need_dx) dx = at::cat({dz, dn, dr}, 2);
          break;
        }
        dw_ih = at::cat({at::mm(flat(dz).t(), x2), at::mm(flat(dn).t(), x2)});
        if (has_proj) dw_proj = at::mm(flat(dr).t(), x2);
        if (need_dx) {
          dx = has_proj ? at::mm(flat(dr), w_proj) : flat(dr).clone();
          dx.addmm_(flat(dz), w_ih.narrow(0, 0, H));
          dx.addmm_(flat(dn), w_ih.narrow(0, H, H));
        }
      } else {
        dw_hh = at::cat({at::mm(flat(dz).t(), flat(blk(S, 4))), grad_hprev(dr, out, h0),
                         at::mm(flat(dn).t(), flat(RH))});
        if (!projected) dw_ih = at::mm(flat(dG).t(), x2);
        if (want_dx) dx = at::mm(flat(dG), w_ih);
        if (projected && need_dx) dx = dG;
      }
    }
  }
  if (want_dx) dx = dx.view({T, B, d.I});
  return {dx, dh, dc, dw_ih, dw_hh, db_a, db_b, dw_proj};
}

// ---------------------------------------------------------------------------------------------
// Sampling: one step of every layer in one call (no autograd, no dropout).
// weights: 5 per layer, (w_ih, w_hh, b_a, b_b, w_proj), None where absent; `projected`: x is
// layer 0's input projection (as in layer_forward).
// Returns {h_top (B,H), h_n (L,B,H), c_n (L,B,H) or undefined}.
// ---------------------------------------------------------------------------------------------

std::vector<Tensor> step_layers(int64_t cell, const Tensor& x, const Tensor& h,
                                const optional<Tensor>& c, const std::vector<optional<Tensor>>& ws,
                                bool projected, double zoneout_h, double zoneout_c) {
  // zoneout rates > 0: the eval expectation, state = rate * prev + (1 - rate) * new.
  const bool zoned = zoneout_h > 0 || zoneout_c > 0;
  optional<Tensor> zh, zc;
  if (zoned) zh = at::full({1, h.size(1), h.size(2)}, zoneout_h, h.options());
  if (zoned && c.has_value()) zc = at::full({1, h.size(1), h.size(2)}, zoneout_c, h.options());
  const int64_t L = h.size(0);
  TORCH_CHECK(static_cast<int64_t>(ws.size()) == 5 * L, "step_layers: expected 5 weights per layer");
  Tensor h_n = at::empty_like(h), c_n = c.has_value() ? at::empty_like(*c) : Tensor();
  Tensor input = x.unsqueeze(0);  // (1, B, I)
  for (int64_t k = 0; k < L; ++k) {
    const auto* w = &ws[5 * k];
    Weights lw = prepare(cell, w[0], *w[1], w[2], w[3], w[4]);
    optional<Tensor> c0 = c.has_value() ? optional<Tensor>((*c)[k]) : c10::nullopt;
    std::vector<Tensor> r = forward_layer(cell, input, h[k], c0, lw, /*save=*/false,
                                          /*projected=*/projected && k == 0, c10::nullopt, zh, zc);
    h_n[k].copy_(r[1]);
    if (c_n.defined()) c_n[k].copy_(r[2]);
    input = r[0];
  }
  return {input[0], h_n, c_n};
}

// ---------------------------------------------------------------------------------------------
// IndRNN (Li et al. 2018): h_t = act(u_t + w * h_{t-1} + b), w and b (H,), u = x W_ih^T (T, B, H)
// projected by the caller (one GEMM, autograd's). The recurrence is element-wise, so each
// (row, unit) runs its own scalar loop over time with nothing shared: the whole layer is one pass
// over u in C++, instead of T framework calls of a few element-wise ops each. Backward walks the
// steps in reverse from the saved outputs (act' is read from h_t: relu 1[h > 0], tanh 1 - h^2)
// and forms dw, db as reductions over all steps. lengths (B,) (any order): row b is live for
// t < lengths[b]; later outputs are 0 and its final state is the one after its last live step.
// ---------------------------------------------------------------------------------------------

template <typename scalar_t>
void indrnn_forward_impl(const Tensor& u, const Tensor& h0, const Tensor& w, const scalar_t* bias,
                         bool relu, const int64_t* len, Tensor& out, Tensor& h_n, int64_t r0,
                         int64_t r1) {
  const int64_t T = u.size(0), B = u.size(1), H = u.size(2);
  const scalar_t* up = u.data_ptr<scalar_t>();
  const scalar_t* wp = w.data_ptr<scalar_t>();
  scalar_t* o = out.data_ptr<scalar_t>();
  scalar_t* hn = h_n.data_ptr<scalar_t>();
  std::memcpy(hn + r0 * H, h0.data_ptr<scalar_t>() + r0 * H, (r1 - r0) * H * sizeof(scalar_t));
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t b = r0; b < r1; ++b) {
      scalar_t* h = hn + b * H;
      scalar_t* o_t = o + (t * B + b) * H;
      if (len && t >= len[b]) {  // finished: output 0, state kept
        std::memset(o_t, 0, H * sizeof(scalar_t));
        continue;
      }
      const scalar_t* u_t = up + (t * B + b) * H;
      if (relu) {
        for (int64_t j = 0; j < H; ++j) {
          scalar_t a = u_t[j] + wp[j] * h[j] + (bias ? bias[j] : scalar_t(0));
          h[j] = o_t[j] = a > scalar_t(0) ? a : scalar_t(0);
        }
      } else {
        for (int64_t j = 0; j < H; ++j) {
          scalar_t a = u_t[j] + wp[j] * h[j] + (bias ? bias[j] : scalar_t(0));
          h[j] = o_t[j] = tanh_(a);
        }
      }
    }
  }
}

// Returns {out (T, B, H), h_n (B, H)}.
std::vector<Tensor> indrnn_forward(const Tensor& u_in, const Tensor& h0_in, const Tensor& w_in,
                                   const optional<Tensor>& b_in, bool relu,
                                   const optional<Tensor>& lengths) {
  TORCH_CHECK(u_in.dim() == 3 && h0_in.dim() == 2 && w_in.dim() == 1, "indrnn_forward: shapes");
  Tensor u = u_in.contiguous(), h0 = h0_in.contiguous(), w = w_in.contiguous();
  Tensor b = b_in.has_value() ? b_in->contiguous() : Tensor();
  Tensor len = lengths.has_value() ? lengths->to(at::kLong).contiguous() : Tensor();
  Tensor out = at::empty_like(u), h_n = at::empty_like(h0);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "indrnn_forward", [&] {
    const scalar_t* bp = b.defined() ? b.data_ptr<scalar_t>() : nullptr;
    const int64_t* lp = len.defined() ? len.data_ptr<int64_t>() : nullptr;
    split_batch(u.size(1), [&](int64_t r0, int64_t r1) {
      indrnn_forward_impl<scalar_t>(u, h0, w, bp, relu, lp, out, h_n, r0, r1);
    });
  });
  return {out, h_n};
}

template <typename scalar_t>
void indrnn_backward_impl(const scalar_t* gout, const scalar_t* gh, const Tensor& h0,
                          const Tensor& w, const Tensor& out, bool relu, const int64_t* len,
                          Tensor& du, Tensor& dh0, int64_t r0, int64_t r1) {
  const int64_t T = out.size(0), B = out.size(1), H = out.size(2);
  const scalar_t* wp = w.data_ptr<scalar_t>();
  const scalar_t* o = out.data_ptr<scalar_t>();
  scalar_t* d = du.data_ptr<scalar_t>();
  scalar_t* dh = dh0.data_ptr<scalar_t>();  // the carried dh, per row; dh_0 at the end
  for (int64_t b = r0; b < r1; ++b) {
    scalar_t* c = dh + b * H;
    if (gh) std::memcpy(c, gh + b * H, H * sizeof(scalar_t));
    else std::memset(c, 0, H * sizeof(scalar_t));
  }
  for (int64_t t = T - 1; t >= 0; --t) {
    for (int64_t b = r0; b < r1; ++b) {
      scalar_t* d_t = d + (t * B + b) * H;
      if (len && t >= len[b]) {  // a finished step: its output is the constant 0
        std::memset(d_t, 0, H * sizeof(scalar_t));
        continue;
      }
      const scalar_t* h_t = o + (t * B + b) * H;
      const scalar_t* g_t = gout ? gout + (t * B + b) * H : nullptr;
      scalar_t* c = dh + b * H;
      for (int64_t j = 0; j < H; ++j) {
        scalar_t g = c[j] + (g_t ? g_t[j] : scalar_t(0));
        scalar_t da = relu ? (h_t[j] > scalar_t(0) ? g : scalar_t(0))
                           : g * (scalar_t(1) - h_t[j] * h_t[j]);
        d_t[j] = da;
        c[j] = da * wp[j];
      }
    }
  }
}

// Returns {du (T, B, H), dh0 (B, H), dw (H,), db (H,) or undefined}.
std::vector<Tensor> indrnn_backward(const optional<Tensor>& grad_out, const optional<Tensor>& grad_h,
                                    const Tensor& h0_in, const Tensor& w_in, const Tensor& out_in,
                                    bool has_bias, bool relu, const optional<Tensor>& lengths) {
  Tensor h0 = h0_in.contiguous(), w = w_in.contiguous(), out = out_in.contiguous();
  Tensor go = grad_out.has_value() ? grad_out->contiguous() : Tensor();
  Tensor gh = grad_h.has_value() ? grad_h->contiguous() : Tensor();
  Tensor len = lengths.has_value() ? lengths->to(at::kLong).contiguous() : Tensor();
  Tensor du = at::empty_like(out), dh0 = at::empty_like(h0);
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "indrnn_backward", [&] {
    const scalar_t* gop = go.defined() ? go.data_ptr<scalar_t>() : nullptr;
    const scalar_t* ghp = gh.defined() ? gh.data_ptr<scalar_t>() : nullptr;
    const int64_t* lp = len.defined() ? len.data_ptr<int64_t>() : nullptr;
    split_batch(out.size(1), [&](int64_t r0, int64_t r1) {
      indrnn_backward_impl<scalar_t>(gop, ghp, h0, w, out, relu, lp, du, dh0, r0, r1);
    });
  });
  // h_{t-1} of step t: h0, then out[t-1] (0 after a row's end, where du is 0 as well).
  const int64_t T = out.size(0);
  Tensor dw = (du[0] * h0).sum(0);
  if (T > 1) dw += (du.narrow(0, 1, T - 1) * out.narrow(0, 0, T - 1)).sum({0, 1});
  Tensor db = has_bias ? du.sum({0, 1}) : Tensor();
  return {du, dh0, dw, db};
}

void set_min_rows_per_thread(int64_t rows) { g_min_rows = std::max<int64_t>(1, rows); }

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rnnlab fused recurrence (Appleyard et al. 2016 on a CPU)";
  m.def("layer_forward", &layer_forward, "one layer over T steps; saves for backward if asked");
  m.def("layer_backward", &layer_backward, "gradients of one layer from the saved tensors");
  m.def("step_layers", &step_layers, "one step of every layer, for sampling");
  m.def("indrnn_forward", &indrnn_forward, "IndRNN's element-wise recurrence over T steps");
  m.def("indrnn_backward", &indrnn_backward, "gradients of indrnn_forward");
  m.def("set_min_rows_per_thread", &set_min_rows_per_thread, "batch rows a thread must get");
}
