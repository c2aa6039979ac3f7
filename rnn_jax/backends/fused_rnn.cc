// rnn_jax's own fused CPU sequence kernel (backend="fused_cpu"): Elman (tanh, relu), LSTM
// (gates i, f, g, o) and the reset-after GRU (gates r, z, n), forward and backward over a
// whole sequence in one XLA FFI call each. Built on first use by rnn_jax/backends/build.py
// with -O3 -march=native against jax.ffi.include_dir() and oneDNN 3.2's headers; the products
// over all positions are oneDNN's sgemm (dnnl_sgemm, row-major), the per-step recurrent ones
// a register-blocked kernel of ours on w_h packed once per call, the gate maths plain C++
// loops the compiler vectorises.
//
// Layout. A sequence's N = B*T positions are addressed as XLA holds them: row b*T + t
// (batch-major) or t*B + b (time-major); every (N, .) matrix below uses that row order, so
// hs is written in place and the products over all positions are single GEMMs whatever the
// layout. Weights are rnn_jax's (w_x (I, G*H), w_h (H, G*H), row vectors, gates side by side).
//
// Algorithm (forward):
//   Xp = xs @ w_x + b                      one (N, I) x (I, GH) product for every step
//   then the recurrence, split across threads: with enough rows per thread, into chunks of
//   batch rows, each thread running its chunks' whole sequences (rows never interact: no
//   synchronisation per step); with few rows (B < 32 per thread) each thread of a gang
//   takes a slice of the hidden units for all rows, with a barrier per step. Per step:
//     Zh = h @ w_h (+ b_h for the GRU)     (rows, H) x (H, G*units)
//     gate maths reading Xp at each row's position, writing hs and the residuals
// Backward: the same split runs the reverse sweep (dz per step, dh_prev = dz_h @ w_h^T),
// writing dz_x at each position (an output: the caller computes d_xs = dz_x @ w_x^T as an
// XLA dot, which XLA drops where nobody needs d_xs, as for a first layer's data); then
// d_w_x = xs^T @ dz_x, d_w_h = h_prev^T @ dz_h and the bias gradients as single
// products/sums over all positions.
//
// lengths (B,) int32, clamped to [0, T]: row b reads positions 0..L-1 (reverse: L-1..0);
// outputs past L are zero, the carry is frozen after its last valid step (the scan path's
// semantics), and no gradient flows through the padded positions.
//
// Residuals (training forward), sections of an (N, R*H) float buffer, one row per position:
//   tanh/relu: h_new, h_prev                                   R = 2
//   lstm:      i, f, g, o (after the nonlinearities), c_prev, tanh(c), h_prev   R = 7
//   gru:       r, z, n, h_n (= h @ w_hn + b_hn), h_prev        R = 5
// h_prev is zero at padded positions; the other sections are not read there.
//
// Threads, denormal flushing, scratch buffers and the element-wise functions: fused_common.h
// (the team of XLA's intra-op pool threads; rnn_jax_fused_set_num_threads(n) caps it).

#include <omp.h>

#include "fused_common.h"
#include "oneapi/dnnl/dnnl.h"

namespace {

enum Kind : int32_t { kTanh = 0, kRelu = 1, kLstm = 2, kGru = 3 };

int64_t num_gates(int32_t kind) { return kind == kLstm ? 4 : kind == kGru ? 3 : 1; }

// ---------------------------------------------------------------------------------------
// Products: oneDNN's row-major sgemm, C = alpha op(A) op(B) + beta C.

std::atomic<int> gemm_status{dnnl_success};

void gemm(char ta, char tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
          const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
    return;
  }
  const dnnl_status_t status = dnnl_sgemm(ta, tb, m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc);
  if (status != dnnl_success) gemm_status.store(status);
}

// Throws if a product failed since the call began (products never throw themselves: a
// throw between two barriers would leave the other threads waiting).
void check_products() {
  const int status = gemm_status.exchange(dnnl_success);
  if (status != dnnl_success) {
    throw std::runtime_error("dnnl_sgemm failed with status " + std::to_string(status));
  }
}


// The per-step recurrent products, C (rows, n) = A (rows, k) @ W (k, n), reuse one W for
// every step: W is packed once per call into panels of kPanel columns (k rows of kPanel
// floats each, zero-padded), and a register-blocked kernel (kRows rows x kPanel columns of
// accumulators, GCC vector extensions: FMAs on AVX2/AVX-512 with -march=native) runs each
// step. sgemm would pack W again at every step, which costs it a third of these small
// products' time (rows = 16-64).
constexpr int64_t kPanel = 16, kRows = 6;
typedef float Vec8 __attribute__((vector_size(32)));

inline Vec8 load8(const float* p) {
  Vec8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Whole cache lines (64 bytes) for the panels' rows: a row split across two lines would
// cost two L1 reads per load.
float* line_aligned(std::vector<float>& storage, size_t floats) {
  storage.assign(floats + 16, 0.0f);
  const uintptr_t base = reinterpret_cast<uintptr_t>(storage.data());
  return storage.data() + ((64 - base % 64) % 64) / sizeof(float);
}

struct PackedWeights {
  int64_t k = 0, n = 0;
  std::vector<float> storage;
  float* panels;  // panel q: k rows of kPanel floats, line-aligned
  // w(i, j) is W's entry at row i < k, column j < n; `transposed`: w reads a transposed
  // source (contiguous in i), so the packing walks i innermost.
  template <class At>
  PackedWeights(int64_t k_, int64_t n_, bool transposed, At w) : k(k_), n(n_) {
    const int64_t count = (n + kPanel - 1) / kPanel;
    panels = line_aligned(storage, count * k * kPanel);
    for (int64_t q = 0; q < count; ++q) {
      float* panel = panels + q * k * kPanel;
      const int64_t cols = std::min(kPanel, n - q * kPanel);
      if (transposed) {
        for (int64_t u = 0; u < cols; ++u)
          for (int64_t i = 0; i < k; ++i) panel[i * kPanel + u] = w(i, q * kPanel + u);
      } else {
        for (int64_t i = 0; i < k; ++i)
          for (int64_t u = 0; u < cols; ++u) panel[i * kPanel + u] = w(i, q * kPanel + u);
      }
    }
  }
};

// C's block (rows <= kRows, cols <= kPanel) = (or += with `add`) k steps of A's packed row
// block (k x kRows floats, rows interleaved) @ one panel (k x kPanel floats). `next`, if
// given: the panel the next blocks will read, fetched into the caches one line (kPanel
// floats) per step meanwhile, so that its first block does not wait on memory.
void panel_block(int64_t k, const float* a, const float* panel, float* c, int64_t ldc,
                 int64_t rows, int64_t cols, bool add, const float* next) {
  Vec8 acc[kRows][2] = {};
  for (int64_t i = 0; i < k; ++i) {
    if (next != nullptr) __builtin_prefetch(next + i * kPanel);
    const Vec8 w0 = load8(panel + i * kPanel), w1 = load8(panel + i * kPanel + 8);
    for (int r = 0; r < kRows; ++r) {
      const float x = a[i * kRows + r];
      acc[r][0] += x * w0;
      acc[r][1] += x * w1;
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    float out[kPanel];
    std::memcpy(out, &acc[r][0], sizeof acc[r][0]);
    std::memcpy(out + 8, &acc[r][1], sizeof acc[r][1]);
    float* row = c + r * ldc;
    if (add) {
      for (int64_t u = 0; u < cols; ++u) row[u] += out[u];
    } else {
      std::memcpy(row, out, cols * sizeof(float));
    }
  }
}

// C (rows, W.n), row stride ldc, = A (rows, W.k), row stride lda, @ W. A is packed first
// into blocks of kRows rows interleaved (zero-padded), so that the kernel reads one stream
// (rows of A a power of two apart would share a few L1 sets); the inner dimension runs in
// chunks of kDepth, so that a chunk of packed A stays in L2 and one of a panel (32 KB) mostly
// in L1 while every row block reads them. 512 rather than 256: fewer passes over C, and
// 10-20% more GFLOP/s at (64, 1024) @ (1024, 2048) and (64, 4096) @ (4096, 512) on the 2-core
// AVX2 EPYC (standalone, noisy: 78 against 65 median).
constexpr int64_t kDepth = 512;

void packed_product(int64_t rows, const float* a, int64_t lda, const PackedWeights& w, float* c,
                    int64_t ldc) {
  const int64_t k = w.k, blocks = (rows + kRows - 1) / kRows;
  thread_local std::vector<float> packed;
  packed.assign(blocks * kRows * k, 0.0f);
  for (int64_t r = 0; r < rows; ++r) {
    float* block = packed.data() + (r / kRows) * kRows * k + r % kRows;
    for (int64_t i = 0; i < k; ++i) block[i * kRows] = a[r * lda + i];
  }
  for (int64_t i0 = 0; i0 < k; i0 += kDepth) {
    const int64_t depth = std::min(kDepth, k - i0);
    for (int64_t q = 0; q * kPanel < w.n; ++q) {
      const float* panel = w.panels + (q * k + i0) * kPanel;
      const int64_t cols = std::min(kPanel, w.n - q * kPanel);
      // The panel after this one (the next chunk's first panel after the last), which the
      // first row block prefetches.
      const bool last = (q + 1) * kPanel >= w.n;
      const float* next = !last ? panel + k * kPanel
                          : i0 + kDepth < k ? w.panels + (i0 + kDepth) * kPanel
                                            : nullptr;
      for (int64_t b = 0; b < blocks; ++b) {
        const float* a_block = packed.data() + (b * k + i0) * kRows;
        panel_block(depth, a_block, panel, c + b * kRows * ldc + q * kPanel, ldc,
                    std::min(kRows, rows - b * kRows), cols, i0 > 0, b == 0 ? next : nullptr);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------

struct Shape {
  int32_t kind;
  bool reverse, batch_major;
  int64_t steps, batch, input, hidden;
  int64_t gh() const { return num_gates(kind) * hidden; }
  int64_t positions() const { return steps * batch; }
  int64_t row(int64_t b, int64_t t) const { return batch_major ? b * steps + t : t * batch + b; }
  int64_t length(const int32_t* lengths, int64_t b) const {
    return std::min<int64_t>(std::max<int64_t>(lengths[b], 0), steps);
  }
  // Position row b reads at step s (s < its length L).
  int64_t position(int64_t len, int64_t s) const { return reverse ? len - 1 - s : s; }
};

Shape shape_of(int32_t kind, bool reverse, bool batch_major, ffi::AnyBuffer xs,
               ffi::AnyBuffer h0) {
  auto d = xs.dimensions();
  Shape s{kind, reverse, batch_major, d[0], d[1], d[2], h0.dimensions()[1]};
  if (batch_major) std::swap(s.steps, s.batch);
  return s;
}

float* fdata(ffi::AnyBuffer b) { return static_cast<float*>(b.untyped_data()); }
template <class R>
float* fdata(R& r) {
  return static_cast<float*>(r->untyped_data());
}

// Residual sections, each (N, width*H) floats within the (N, R*H) buffer.
struct Residuals {
  float *gates, *c_prev, *tanh_c, *h_n, *h_new, *h_prev;
  Residuals(float* ws, const Shape& s) {
    const int64_t nh = s.positions() * s.hidden;
    gates = c_prev = tanh_c = h_n = h_new = h_prev = nullptr;
    switch (s.kind) {
      case kLstm:
        gates = ws;
        c_prev = ws + 4 * nh;
        tanh_c = ws + 5 * nh;
        h_prev = ws + 6 * nh;
        break;
      case kGru:
        gates = ws;
        h_n = ws + 3 * nh;
        h_prev = ws + 4 * nh;
        break;
      default:
        h_new = ws;
        h_prev = ws + nh;
    }
  }
};

// ---------------------------------------------------------------------------------------
// Forward

struct ForwardArgs {
  const float *xs, *h0, *c0, *w_x, *w_h, *b, *b_h;
  const int32_t* lengths;
  float *hs, *h_last, *c_last, *ws;  // ws null: inference (no residuals)
};

// How a gang splits the recurrence: by batch rows (no synchronisation, each thread runs its
// rows' whole sequence) while every thread gets at least kMinRows rows, else by hidden units
// (every thread all rows; a barrier per step, since each step's product reads all of h).
// Small products lose efficiency: oneDNN's sgemm ran (16, 256) x (256, 1024) at ~30 GFLOP/s
// on one AVX2 core, (32, 256) x (256, 512) at ~80 (tuned then; not re-tuned for the packed
// kernel, which packs w_h once rather than at every product).
constexpr int64_t kMinRows = 32;

struct Block {
  int64_t b0, b1, j0, j1;  // rows [b0, b1), hidden units [j0, j1)
  bool by_units;
};

// Split by hidden units too when w_h outgrows the caches (kBigWeights bytes): by rows, each
// thread would stream all of it from memory every step; by units, its own share.
constexpr int64_t kBigWeights = 4 << 20;

bool split_by_units(const Shape& s, int threads) {
  const bool big = s.hidden * s.gh() * int64_t{sizeof(float)} > kBigWeights;
  return threads > 1 && (s.batch < kMinRows * threads || big) && s.hidden >= 8 * threads;
}

// Batch-row chunks for the split by rows: at least one per thread, and up to four per
// thread while each keeps kMinRows rows, so that a thread the OS delays holds back only a
// small share (the chunks are claimed as threads come free).
int row_chunks(const Shape& s, int threads) {
  const int64_t chunks = std::max<int64_t>(std::min<int64_t>(threads, s.batch),
                                           std::min<int64_t>(s.batch / kMinRows, 4 * threads));
  return static_cast<int>(std::max<int64_t>(chunks, 1));
}

Block block_of(const Shape& s, int index, int size) {
  if (split_by_units(s, size)) {
    return {0, s.batch, chunk_begin(s.hidden, size, index), chunk_begin(s.hidden, size, index + 1),
            true};
  }
  return {chunk_begin(s.batch, size, index), chunk_begin(s.batch, size, index + 1), 0, s.hidden,
          false};
}

// run(block, barrier) over the whole batch: a gang split by hidden units (one barrier per
// step) when the batch is small, else independent row chunks, each its own gang of one.
template <class Run>
void over_blocks(const Shape& s, Team& team, Run&& run) {
  if (split_by_units(s, team.threads())) {
    team.gang(team.threads(), [&](int index, int size, Barrier& barrier) {
      run(block_of(s, index, size), barrier);
    });
    return;
  }
  const int chunks = row_chunks(s, team.threads());
  team.parallel(chunks, [&](int i) {
    Barrier alone(1);
    const Block blk{chunk_begin(s.batch, chunks, i), chunk_begin(s.batch, chunks, i + 1), 0,
                    s.hidden, false};
    run(blk, alone);
  });
}

// The forward recurrence of one block. `h` is two (B, H) buffers shared by the gang (this
// step's carry and the next one's).
void forward_block(const Shape& s, const ForwardArgs& a, const float* xp, const Block& blk,
                   float* h_pair, Barrier& barrier) {
  const int64_t H = s.hidden, G = num_gates(s.kind), GH = s.gh();
  const int64_t rows = blk.b1 - blk.b0, j0 = blk.j0, Hk = blk.j1 - blk.j0, GHk = G * Hk;
  const int64_t B = s.batch;
  float* hbuf[2] = {h_pair, h_pair + B * H};
  // w_h's columns of this block's units, gate by gate: (H, G*Hk)
  const PackedWeights w(H, GHk, false, [&](int64_t k, int64_t col) {
    return a.w_h[k * GH + (col / Hk) * H + j0 + col % Hk];
  });
  std::vector<float> c(s.kind == kLstm ? rows * Hk : 0), zh(rows * GHk), scratch(GH + H);
  std::vector<int64_t> len(rows);
  int64_t longest = 0;
  std::unique_ptr<Residuals> res(a.ws ? new Residuals(a.ws, s) : nullptr);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t b = blk.b0 + r;
    len[r] = s.length(a.lengths, b);
    longest = std::max(longest, len[r]);
    std::memcpy(hbuf[0] + b * H + j0, a.h0 + b * H + j0, Hk * sizeof(float));
    if (s.kind == kLstm) std::memcpy(&c[r * Hk], a.c0 + b * H + j0, Hk * sizeof(float));
    if (j0 != 0) continue;
    // Padded positions (one thread per row): zero outputs; h_prev zero too (the d_w_h
    // product reads every row; the other residuals are read at valid positions only).
    for (int64_t t = len[r]; t < s.steps; ++t) {
      const int64_t p = s.row(b, t);
      std::memset(a.hs + p * H, 0, H * sizeof(float));
      if (res) std::memset(res->h_prev + p * H, 0, H * sizeof(float));
    }
  }
  if (blk.by_units) barrier.wait();  // h0 whole before the first product
  for (int64_t step = 0; step < longest; ++step) {
    const float* hc = hbuf[step % 2];
    float* hn_buf = hbuf[(step + 1) % 2];
    // Rows whose sequence has ended keep their carry; the product runs over all rows of
    // the block (cheaper than gathering the live ones).
    packed_product(rows, hc + blk.b0 * H, H, w, zh.data(), GHk);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t b = blk.b0 + r;
      const float* hr = hc + b * H + j0;  // this block's units of h_{t-1}
      float* hw = hn_buf + b * H + j0;
      if (step >= len[r]) {
        std::memcpy(hw, hr, Hk * sizeof(float));
        continue;
      }
      const int64_t p = s.row(b, s.position(len[r], step));
      const float* x = xp + p * GH + j0;
      const float* z = zh.data() + r * GHk;
      float* out = a.hs + p * H + j0;
      if (res) std::memcpy(res->h_prev + p * H + j0, hr, Hk * sizeof(float));
      if (s.kind == kLstm) {
        float* cr = &c[r * Hk];
        // Without residuals (inference) the gates go to a scratch row: no branch in the loop.
        float* g = res ? res->gates + p * GH + j0 : scratch.data();
        float* tc = res ? res->tanh_c + p * H + j0 : scratch.data() + GH;
        if (res) std::memcpy(res->c_prev + p * H + j0, cr, Hk * sizeof(float));
#pragma GCC ivdep
        for (int64_t j = 0; j < Hk; ++j) {
          const float i_ = sigmoid_f(x[j] + z[j]);
          const float f_ = sigmoid_f(x[H + j] + z[Hk + j]);
          const float g_ = tanh_f(x[2 * H + j] + z[2 * Hk + j]);
          const float o_ = sigmoid_f(x[3 * H + j] + z[3 * Hk + j]);
          const float cn = f_ * cr[j] + i_ * g_;
          const float t_ = tanh_f(cn);
          const float hn = o_ * t_;
          cr[j] = cn;
          hw[j] = hn;
          out[j] = hn;
          g[j] = i_;
          g[H + j] = f_;
          g[2 * H + j] = g_;
          g[3 * H + j] = o_;
          tc[j] = t_;
        }
      } else if (s.kind == kGru) {
        float* g = res ? res->gates + p * GH + j0 : scratch.data();
        float* hn_out = res ? res->h_n + p * H + j0 : scratch.data() + GH;
        const float* bh = a.b_h + j0;
#pragma GCC ivdep
        for (int64_t j = 0; j < Hk; ++j) {
          const float r_ = sigmoid_f(x[j] + z[j] + bh[j]);
          const float z_ = sigmoid_f(x[H + j] + z[Hk + j] + bh[H + j]);
          const float hn = z[2 * Hk + j] + bh[2 * H + j];
          const float n_ = tanh_f(x[2 * H + j] + r_ * hn);
          const float hnew = (1.0f - z_) * n_ + z_ * hr[j];
          hw[j] = hnew;
          out[j] = hnew;
          g[j] = r_;
          g[H + j] = z_;
          g[2 * H + j] = n_;
          hn_out[j] = hn;
        }
      } else {
        float* hsave = res ? res->h_new + p * H + j0 : scratch.data();
        if (s.kind == kRelu) {
#pragma GCC ivdep
          for (int64_t j = 0; j < Hk; ++j) {
            const float hnew = std::max(x[j] + z[j], 0.0f);
            hw[j] = hnew;
            out[j] = hnew;
            hsave[j] = hnew;
          }
        } else {
#pragma GCC ivdep
          for (int64_t j = 0; j < Hk; ++j) {
            const float hnew = tanh_f(x[j] + z[j]);
            hw[j] = hnew;
            out[j] = hnew;
            hsave[j] = hnew;
          }
        }
      }
    }
    if (blk.by_units) barrier.wait();  // h_t whole before the next product
  }
  const float* hf = hbuf[longest % 2];
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t b = blk.b0 + r;
    std::memcpy(a.h_last + b * H + j0, hf + b * H + j0, Hk * sizeof(float));
    if (s.kind == kLstm) std::memcpy(a.c_last + b * H + j0, &c[r * Hk], Hk * sizeof(float));
  }
}

void forward(const Shape& s, const ForwardArgs& a, Team& team) {
  const int64_t N = s.positions(), GH = s.gh();
  Scratch xp(N * GH);
  // Xp = xs @ w_x + b, rows split across the team.
  const int xparts = static_cast<int>(std::min<int64_t>(4 * team.threads(), N));
  team.parallel(xparts, [&](int i) {
    const int64_t r0 = chunk_begin(N, xparts, i), r1 = chunk_begin(N, xparts, i + 1);
    for (int64_t r = r0; r < r1; ++r) std::memcpy(xp.get() + r * GH, a.b, GH * sizeof(float));
    gemm('N', 'N', r1 - r0, GH, s.input, a.xs + r0 * s.input, s.input, a.w_x, GH, 1.0f,
         xp.get() + r0 * GH, GH);
  });
  check_products();
  Scratch h_pair(2 * s.batch * s.hidden);
  over_blocks(s, team, [&](const Block& blk, Barrier& barrier) {
    forward_block(s, a, xp.get(), blk, h_pair.get(), barrier);
  });
  check_products();
}

struct BackwardArgs {
  const float *xs, *w_x, *w_h, *ws, *d_hs, *d_h_last, *d_c_last;
  const int32_t* lengths;
  float *dz_x, *d_h0, *d_c0, *d_w_x, *d_w_h, *d_b, *d_b_h;
};

// The reverse sweep of one block: writes dz_x (and dz_h for the GRU) at each valid position
// (zero at padded ones), d_h0 and d_c0. `dstep` is two (B, GH) buffers shared by the gang:
// each step's dz_h, which the product dh_{t-1} = dz_h @ w_h^T reads whole.
void backward_block(const Shape& s, const BackwardArgs& a, float* dzx, float* dzh,
                    const Block& blk, float* dstep_pair, Barrier& barrier) {
  const int64_t H = s.hidden, GH = s.gh(), B = s.batch;
  const int64_t rows = blk.b1 - blk.b0, j0 = blk.j0, Hk = blk.j1 - blk.j0;
  Residuals res(const_cast<float*>(a.ws), s);
  float* dbuf[2] = {dstep_pair, dstep_pair + B * GH};
  std::vector<float> dh(rows * Hk), dc(s.kind == kLstm ? rows * Hk : 0), back(rows * Hk);
  // w_h^T's columns of this block's units: (GH, Hk), w_h's rows [j0, j1)
  const PackedWeights w_t(GH, Hk, true,
                          [&](int64_t k, int64_t u) { return a.w_h[(j0 + u) * GH + k]; });
  std::vector<int64_t> len(rows);
  int64_t longest = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t b = blk.b0 + r;
    std::memcpy(&dh[r * Hk], a.d_h_last + b * H + j0, Hk * sizeof(float));
    if (s.kind == kLstm) std::memcpy(&dc[r * Hk], a.d_c_last + b * H + j0, Hk * sizeof(float));
    len[r] = s.length(a.lengths, b);
    longest = std::max(longest, len[r]);
    if (j0 != 0) continue;
    for (int64_t t = len[r]; t < s.steps; ++t) {  // one thread per row
      const int64_t p = s.row(b, t);
      std::memset(dzx + p * GH, 0, GH * sizeof(float));
      if (dzh != dzx) std::memset(dzh + p * GH, 0, GH * sizeof(float));
    }
  }
  for (int64_t step = longest - 1; step >= 0; --step) {
    float* dsb = dbuf[step % 2];
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t b = blk.b0 + r;
      float* ds = dsb + b * GH + j0;
      if (step >= len[r]) {  // frozen carry: its gradient passes through unchanged
        for (int64_t g = 0; g < num_gates(s.kind); ++g) {
          std::memset(ds + g * H, 0, Hk * sizeof(float));
        }
        continue;
      }
      const int64_t p = s.row(b, s.position(len[r], step));
      const float* dout = a.d_hs + p * H + j0;
      float* dhr = &dh[r * Hk];
      float* zx = dzx + p * GH + j0;
      if (s.kind == kLstm) {
        const float* g = res.gates + p * GH + j0;
        const float* cp = res.c_prev + p * H + j0;
        const float* tc = res.tanh_c + p * H + j0;
        float* dcr = &dc[r * Hk];
#pragma GCC ivdep
        for (int64_t j = 0; j < Hk; ++j) {
          const float i_ = g[j], f_ = g[H + j], g_ = g[2 * H + j], o_ = g[3 * H + j];
          const float d_h = dhr[j] + dout[j];
          const float t_ = tc[j];
          const float d_c = dcr[j] + d_h * o_ * (1.0f - t_ * t_);
          const float di = d_c * g_ * i_ * (1.0f - i_);
          const float df = d_c * cp[j] * f_ * (1.0f - f_);
          const float dg = d_c * i_ * (1.0f - g_ * g_);
          const float d_o = d_h * t_ * o_ * (1.0f - o_);
          zx[j] = di;
          zx[H + j] = df;
          zx[2 * H + j] = dg;
          zx[3 * H + j] = d_o;
          ds[j] = di;
          ds[H + j] = df;
          ds[2 * H + j] = dg;
          ds[3 * H + j] = d_o;
          dcr[j] = d_c * f_;
        }
      } else if (s.kind == kGru) {
        const float* g = res.gates + p * GH + j0;
        const float* hn = res.h_n + p * H + j0;
        const float* hp = res.h_prev + p * H + j0;
        float* zh = dzh + p * GH + j0;
#pragma GCC ivdep
        for (int64_t j = 0; j < Hk; ++j) {
          const float r_ = g[j], z_ = g[H + j], n_ = g[2 * H + j];
          const float d_h = dhr[j] + dout[j];
          const float dn = d_h * (1.0f - z_) * (1.0f - n_ * n_);
          const float dz = d_h * (hp[j] - n_) * z_ * (1.0f - z_);
          const float dr = dn * hn[j] * r_ * (1.0f - r_);
          zx[j] = dr;
          zx[H + j] = dz;
          zx[2 * H + j] = dn;
          zh[j] = dr;
          zh[H + j] = dz;
          zh[2 * H + j] = dn * r_;
          ds[j] = dr;
          ds[H + j] = dz;
          ds[2 * H + j] = dn * r_;
          dhr[j] = d_h * z_;  // the direct path; the product adds dz_h @ w_h^T below
        }
      } else {
        const float* hn = res.h_new + p * H + j0;
        if (s.kind == kRelu) {
#pragma GCC ivdep
          for (int64_t j = 0; j < Hk; ++j) {
            const float d_h = dhr[j] + dout[j];
            const float dpre = hn[j] > 0.0f ? d_h : 0.0f;
            zx[j] = dpre;
            ds[j] = dpre;
          }
        } else {
#pragma GCC ivdep
          for (int64_t j = 0; j < Hk; ++j) {
            const float d_h = dhr[j] + dout[j];
            const float dpre = d_h * (1.0f - hn[j] * hn[j]);
            zx[j] = dpre;
            ds[j] = dpre;
          }
        }
      }
    }
    if (blk.by_units) barrier.wait();  // this step's dz_h whole before the product
    // dh_{t-1} = dz_h @ w_h^T (+ the GRU's direct path) for the live rows, this block's
    // units: w_h's rows [j0, j1) are w_h^T's columns.
    packed_product(rows, dsb + blk.b0 * GH, GH, w_t, back.data(), Hk);
    for (int64_t r = 0; r < rows; ++r) {
      if (step >= len[r]) continue;
      float* dhr = &dh[r * Hk];
      const float* br = &back[r * Hk];
      if (s.kind == kGru) {
        for (int64_t j = 0; j < Hk; ++j) dhr[j] += br[j];
      } else {
        std::memcpy(dhr, br, Hk * sizeof(float));
      }
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t b = blk.b0 + r;
    std::memcpy(a.d_h0 + b * H + j0, &dh[r * Hk], Hk * sizeof(float));
    if (s.kind == kLstm) std::memcpy(a.d_c0 + b * H + j0, &dc[r * Hk], Hk * sizeof(float));
  }
}

// Column sums of an (n, cols) matrix's columns [c0, c1) into out[c0:c1].
void column_sums(const float* m, int64_t n, int64_t cols, int64_t c0, int64_t c1, float* out) {
  std::fill(out + c0, out + c1, 0.0f);
  for (int64_t i = 0; i < n; ++i) {
    const float* row = m + i * cols;
#pragma GCC ivdep
    for (int64_t j = c0; j < c1; ++j) out[j] += row[j];
  }
}

void backward(const Shape& s, const BackwardArgs& a, Team& team) {
  const int64_t N = s.positions(), GH = s.gh(), H = s.hidden, I = s.input;
  float* dzx = a.dz_x;
  Scratch dzh_own(s.kind == kGru ? N * GH : 0);
  float* dzh = s.kind == kGru ? dzh_own.get() : dzx;
  Scratch dstep_pair(2 * s.batch * GH);
  over_blocks(s, team, [&](const Block& blk, Barrier& barrier) {
    backward_block(s, a, dzx, dzh, blk, dstep_pair.get(), barrier);
  });
  check_products();
  const float* h_prev = Residuals(const_cast<float*>(a.ws), s).h_prev;
  // The weight and bias gradients, split by output columns: each chunk's products write
  // their share of d_w_h and d_w_x directly, over all positions at once. (Position chunks
  // would need one partial (H + I, GH) result per chunk, then a pass that adds them up: at
  // the wide sizes that is hundreds of MB written and read again.) Several chunks per
  // thread, so that a late helper thread still gets a share, while each keeps 64 columns.
  const int chunks = static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(2 * team.threads(), GH / 64)));
  team.parallel(chunks, [&](int i) {
    const int64_t c0 = chunk_begin(GH, chunks, i), c1 = chunk_begin(GH, chunks, i + 1);
    gemm('T', 'N', H, c1 - c0, N, h_prev, H, dzh + c0, GH, 0.0f, a.d_w_h + c0, GH);
    gemm('T', 'N', I, c1 - c0, N, a.xs, I, dzx + c0, GH, 0.0f, a.d_w_x + c0, GH);
    column_sums(dzx, N, GH, c0, c1, a.d_b);
    if (s.kind == kGru) column_sums(dzh, N, GH, c0, c1, a.d_b_h);
  });
  check_products();
}

ffi::Error guarded(const char* what, const std::function<void()>& body) {
  try {
    body();
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("rnn_jax fused_cpu ") + what + ": " + e.what());
  }
  return ffi::Error::Success();
}

const int32_t* idata(ffi::AnyBuffer b) { return static_cast<const int32_t*>(b.untyped_data()); }

ffi::Error Forward(ffi::ThreadPool pool, ffi::AnyBuffer xs, ffi::AnyBuffer lengths,
                   ffi::AnyBuffer h0, ffi::AnyBuffer c0, ffi::AnyBuffer w_x, ffi::AnyBuffer w_h,
                   ffi::AnyBuffer b, ffi::AnyBuffer b_h, ffi::Result<ffi::AnyBuffer> hs,
                   ffi::Result<ffi::AnyBuffer> h_last, ffi::Result<ffi::AnyBuffer> c_last,
                   ffi::Result<ffi::AnyBuffer> ws, int32_t kind, bool reverse,
                   bool batch_major) {
  return guarded("forward", [&] {
    const Shape s = shape_of(kind, reverse, batch_major, xs, h0);
    const bool training = ws->element_count() > 0;
    ForwardArgs a{fdata(xs),    fdata(h0),     fdata(c0),     fdata(w_x),
                  fdata(w_h),   fdata(b),      fdata(b_h),    idata(lengths),
                  fdata(hs),    fdata(h_last), fdata(c_last), training ? fdata(ws) : nullptr};
    prefer_huge_pages(hs->untyped_data(), hs->size_bytes());
    if (training) prefer_huge_pages(ws->untyped_data(), ws->size_bytes());
    Team team(pool);
    forward(s, a, team);
  });
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::AnyBuffer xs, ffi::AnyBuffer lengths,
                    ffi::AnyBuffer w_x, ffi::AnyBuffer w_h, ffi::AnyBuffer ws,
                    ffi::AnyBuffer d_hs, ffi::AnyBuffer d_h_last, ffi::AnyBuffer d_c_last,
                    ffi::Result<ffi::AnyBuffer> dz_x, ffi::Result<ffi::AnyBuffer> d_h0,
                    ffi::Result<ffi::AnyBuffer> d_c0, ffi::Result<ffi::AnyBuffer> d_w_x,
                    ffi::Result<ffi::AnyBuffer> d_w_h, ffi::Result<ffi::AnyBuffer> d_b,
                    ffi::Result<ffi::AnyBuffer> d_b_h, int32_t kind, bool reverse,
                    bool batch_major) {
  return guarded("backward", [&] {
    Shape s{kind, reverse, batch_major, xs.dimensions()[0], xs.dimensions()[1],
            xs.dimensions()[2], d_h_last.dimensions()[1]};
    if (batch_major) std::swap(s.steps, s.batch);
    BackwardArgs a{fdata(xs),       fdata(w_x),     fdata(w_h),      fdata(ws),
                   fdata(d_hs),     fdata(d_h_last), fdata(d_c_last), idata(lengths),
                   fdata(dz_x),     fdata(d_h0),    fdata(d_c0),     fdata(d_w_x),
                   fdata(d_w_h),    fdata(d_b),     fdata(d_b_h)};
    prefer_huge_pages(dz_x->untyped_data(), dz_x->size_bytes());
    Team team(pool);
    backward(s, a, team);
  });
}

}  // namespace

extern "C" void rnn_jax_fused_set_num_threads(int n) { requested_threads.store(n < 0 ? 0 : n); }

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnJaxFusedForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // xs (T, B, I) or (B, T, I)
                                  .Arg<ffi::AnyBuffer>()  // lengths (B,) int32
                                  .Arg<ffi::AnyBuffer>()  // h0 (B, H)
                                  .Arg<ffi::AnyBuffer>()  // c0 (B, H) or (0,)
                                  .Arg<ffi::AnyBuffer>()  // w_x (I, GH)
                                  .Arg<ffi::AnyBuffer>()  // w_h (H, GH)
                                  .Arg<ffi::AnyBuffer>()  // b (GH,): b, or the GRU's b_x
                                  .Arg<ffi::AnyBuffer>()  // b_h (GH,) for the GRU, else (0,)
                                  .Ret<ffi::AnyBuffer>()  // hs, like xs with H features
                                  .Ret<ffi::AnyBuffer>()  // h_last (B, H)
                                  .Ret<ffi::AnyBuffer>()  // c_last (B, H) or (0,)
                                  .Ret<ffi::AnyBuffer>()  // residuals (N*R*H,), or (0,)
                                  .Attr<int32_t>("kind")
                                  .Attr<bool>("reverse")
                                  .Attr<bool>("batch_major"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnJaxFusedBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // xs
                                  .Arg<ffi::AnyBuffer>()  // lengths
                                  .Arg<ffi::AnyBuffer>()  // w_x
                                  .Arg<ffi::AnyBuffer>()  // w_h
                                  .Arg<ffi::AnyBuffer>()  // residuals
                                  .Arg<ffi::AnyBuffer>()  // d_hs
                                  .Arg<ffi::AnyBuffer>()  // d_h_last
                                  .Arg<ffi::AnyBuffer>()  // d_c_last
                                  .Ret<ffi::AnyBuffer>()  // dz_x (N, GH)
                                  .Ret<ffi::AnyBuffer>()  // d_h0
                                  .Ret<ffi::AnyBuffer>()  // d_c0
                                  .Ret<ffi::AnyBuffer>()  // d_w_x
                                  .Ret<ffi::AnyBuffer>()  // d_w_h
                                  .Ret<ffi::AnyBuffer>()  // d_b
                                  .Ret<ffi::AnyBuffer>()  // d_b_h
                                  .Attr<int32_t>("kind")
                                  .Attr<bool>("reverse")
                                  .Attr<bool>("batch_major"));
