// rnn_jax's fused linear-recurrence CPU kernel (backend="fused_cpu" for the linear cells):
// h_t = a_t * h_{t-1} + b_t over a whole time-major (T, B, H) sequence in ONE pass forward
// and ONE reverse pass backward (XLA FFI), with the validity mask, the starts (resets) and
// h0 handled inside. Built on first use by rnn_jax/backends/build.py (-O3 -march=native, no
// oneDNN: there are no products here; XLA computes them before and after).
//
// Kinds (the attribute `kind`):
//   kMinGru = 0: the minGRU's gates fused in. x1 = k (T, B, 2H) = xs @ w_x, [k_z | k_h], and
//                x2 = the bias (2H,), added here (saving XLA a pass over k); z = sigmoid(k_z
//                + b_z), a = 1 - z, b = z * (k_h + b_h). The backward recomputes z from k
//                (cheaper than storing it) and returns d_k (T, B, 2H) and d_bias (2H,), the
//                column sums of d_k (per block, added up after: no XLA pass over d_k).
//   kMinLstm = 3: the minLSTM's, as kMinGru with k (T, B, 3H) = [k_f | k_i | k_h], bias (3H,):
//                f = sigmoid(k_f + b_f), i = sigmoid(k_i + b_i), a = f / (f + i),
//                b = i / (f + i) * (k_h + b_h).
//   kAffine = 1: any real LinearForm. x1 = a, x2 = b (T, B, H); the backward returns d_a, d_b.
//   kComplex = 2: the same over complex64 a, b, h0, hs (the LRU's diagonal recurrence), each
//                element an interleaved (re, im) pair of floats. JAX transposes complex maps
//                without conjugating, so the backward's products are plain complex products.
//
// Semantics (rnn_jax.ops.linear_recurrence.scan_states, per lane (b, j)):
//   prev = (t == 0 or starts[t, b]) ? h0 : state
//   state = valid[t, b] ? a_t * prev + b_t : prev       (frozen past a row's length / masked)
//   hs[t] = valid[t, b] ? state : 0;  final = state after step T-1.
// valid and starts are (T, B) uint8, or (0,) for "all valid" / "only step 0 starts"; t is
// the step in reading order.
//
// Layout and direction (attributes): the (T, B, .) arrays (x1, x2, hs, d_hs and the
// gradients) are time-major, or (B, T, .) with batch_major (what the caller holds: no
// transpose of a long sequence in XLA). With reverse, row b reads its valid prefix backwards,
// step t at position L_b - 1 - t (t < L_b; lengths (B,) int32, or (0,) for L_b = T), else
// at t; outputs are written at the positions read (aligned with the inputs), so neither the
// inputs nor the outputs are flipped in XLA. valid and starts stay in reading order.
//
// Backward: the reverse recurrence over the same lanes, g = dL/dstate:
//   g += d_hs[t] (valid steps); d_a = g * prev, d_b = g, g = g * a (valid steps; a masked
//   step passes g through); at a start step d_h0 += g, g = 0. prev is read back from hs: at a
//   valid step t it is hs at the last valid step before t since the last start, else h0
//   (found per row in O(T) before the sweep). d_hs may be (0,): no output gradient (only the
//   final state is read), which saves reading a (T, B, H) array of zeros.
//
// Threads: the lanes are independent, so tasks are blocks of (rows, hidden units) claimed by
// the team of fused_common.h; no barrier. The inner loops run over contiguous hidden units
// and vectorise (sigmoid_f has no libm call).

#include "fused_common.h"

namespace {

enum Kind : int32_t { kMinGru = 0, kAffine = 1, kComplex = 2, kMinLstm = 3 };

struct Lanes {
  int32_t kind;
  int64_t steps, batch, hidden;  // hidden: elements per row (complex ones for kComplex)
  const uint8_t *valid, *starts;  // (T, B) or null
  bool batch_major, reverse;
  const int32_t* lengths;  // (B,) or null (every row T steps)
  // The row (position) of the (T, B, .) / (B, T, .) arrays that step t of row b reads.
  int64_t row(int64_t t, int64_t b) const {
    if (reverse) {
      const int64_t len =
          lengths == nullptr ? steps : std::min<int64_t>(std::max<int32_t>(lengths[b], 0), steps);
      if (t < len) t = len - 1 - t;
    }
    return batch_major ? b * steps + t : t * batch + b;
  }
  int64_t per() const { return kind == kComplex ? 2 : 1; }  // floats per element
  // Float offset of element j of position row in a (T, B, H) array (x1 of kMinGru: 2H wide).
  int64_t at(int64_t row, int64_t j) const { return (row * hidden + j) * per(); }
  // Gate pre-activations per unit (the fused-gate kinds), 0 for the others.
  int64_t gates() const { return kind == kMinGru ? 2 : kind == kMinLstm ? 3 : 0; }
  int64_t gates_at(int64_t row, int64_t j) const { return row * gates() * hidden + j; }
  bool is_valid(int64_t t, int64_t b) const { return valid == nullptr || valid[t * batch + b]; }
  bool starts_at(int64_t t, int64_t b) const {
    return t == 0 || (starts != nullptr && starts[t * batch + b]);
  }
};

// Tasks: blocks of rows [b0, b1) x hidden units [j0, j1), each run through all steps, the
// rows inner: a step's rows of a block are adjacent in memory (one stream per array, not one
// 1 KB piece per page, which is what a row-at-a-time sweep over (T, B, H) arrays reads).
// Eight blocks per thread (a thread the OS delays, on a shared machine, then holds back a
// small share); with fewer rows than that, rows are split into blocks of >= 16 hidden units.
struct Block {
  int64_t b0, b1, j0, j1;
  int index;  // in [0, count): the slot of its partial sums
};

struct Blocks {
  int row_chunks, unit_chunks;
  int count() const { return row_chunks * unit_chunks; }
};

Blocks blocks_of(const Lanes& s, const Team& team) {
  const int64_t wanted = 8 * team.threads();
  const int row_chunks = static_cast<int>(std::min<int64_t>(s.batch, wanted));
  const int unit_chunks = static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>((wanted + row_chunks - 1) / row_chunks, s.hidden / 16)));
  return {row_chunks, unit_chunks};
}

template <class Body>
void over_blocks(const Lanes& s, Team& team, const Blocks& blocks, Body&& body) {
  const int rows = blocks.row_chunks, units = blocks.unit_chunks;
  team.parallel(blocks.count(), [&](int i) {
    const int r = i / units, u = i % units;
    body(Block{chunk_begin(s.batch, rows, r), chunk_begin(s.batch, rows, r + 1),
               chunk_begin(s.hidden, units, u), chunk_begin(s.hidden, units, u + 1), i});
  });
}

struct ForwardArgs {
  const float *x1, *x2, *h0;
  float *hs, *final_state;
};

// One row's units [j0, j0 + n) at step t: state (n) updated in place, out (n) written.
inline void forward_row(const Lanes& s, const ForwardArgs& a, int64_t row, int64_t j0,
                        int64_t n, float* __restrict state) {
  const int64_t H = s.hidden;
  float* __restrict out = a.hs + s.at(row, j0);
  if (s.kind == kMinGru) {
    const float* __restrict k_z = a.x1 + s.gates_at(row, j0);
    const float* __restrict k_h = k_z + H;
    const float* __restrict b_z = a.x2 + j0;
    const float* __restrict b_h = b_z + H;
#pragma GCC ivdep
    for (int64_t j = 0; j < n; ++j) {
      const float z = sigmoid_f(k_z[j] + b_z[j]);
      state[j] = (1.0f - z) * state[j] + z * (k_h[j] + b_h[j]);
      out[j] = state[j];
    }
  } else if (s.kind == kMinLstm) {
    const float* __restrict k_f = a.x1 + s.gates_at(row, j0);
    const float* __restrict b_f = a.x2 + j0;
#pragma GCC ivdep
    for (int64_t j = 0; j < n; ++j) {
      const float f = sigmoid_f(k_f[j] + b_f[j]), i = sigmoid_f(k_f[H + j] + b_f[H + j]);
      const float total = f + i;
      state[j] = (f / total) * state[j] + (i / total) * (k_f[2 * H + j] + b_f[2 * H + j]);
      out[j] = state[j];
    }
  } else if (s.kind == kAffine) {
    const float* __restrict coef_a = a.x1 + s.at(row, j0);
    const float* __restrict coef_b = a.x2 + s.at(row, j0);
#pragma GCC ivdep
    for (int64_t j = 0; j < n; ++j) {
      state[j] = coef_a[j] * state[j] + coef_b[j];
      out[j] = state[j];
    }
  } else {  // complex: (re, im) pairs
    const float* __restrict coef_a = a.x1 + s.at(row, j0);
    const float* __restrict coef_b = a.x2 + s.at(row, j0);
#pragma GCC ivdep
    for (int64_t j = 0; j < 2 * n; j += 2) {
      const float re = coef_a[j] * state[j] - coef_a[j + 1] * state[j + 1] + coef_b[j];
      const float im = coef_a[j] * state[j + 1] + coef_a[j + 1] * state[j] + coef_b[j + 1];
      state[j] = out[j] = re;
      state[j + 1] = out[j + 1] = im;
    }
  }
}

void forward_block(const Lanes& s, const ForwardArgs& a, const Block& blk) {
  const int64_t n = blk.j1 - blk.j0, floats = n * s.per();
  std::vector<float> states((blk.b1 - blk.b0) * floats);  // (rows, n) elements
  for (int64_t t = 0; t < s.steps; ++t) {
    for (int64_t b = blk.b0; b < blk.b1; ++b) {
      float* state = states.data() + (b - blk.b0) * floats;
      const int64_t row = s.row(t, b);
      if (s.starts_at(t, b)) std::memcpy(state, a.h0 + s.at(b, blk.j0), floats * sizeof(float));
      if (s.is_valid(t, b)) {
        forward_row(s, a, row, blk.j0, n, state);
      } else {
        std::fill_n(a.hs + s.at(row, blk.j0), floats, 0.0f);
      }
    }
  }
  for (int64_t b = blk.b0; b < blk.b1; ++b) {
    std::memcpy(a.final_state + s.at(b, blk.j0), states.data() + (b - blk.b0) * floats,
                floats * sizeof(float));
  }
}

struct BackwardArgs {
  const float *x1, *x2, *h0, *hs, *d_hs, *d_final;  // d_hs null: zero
  float *d_x1, *d_x2, *d_h0;
  float* bias_partials;  // fused gates: (blocks, G*H), each block's column sums of d_k
};

// previous[t] for row b: the step whose output is the state before step t (the last valid
// step since the last start), or -1 where that state is h0.
std::vector<int32_t> previous_steps(const Lanes& s, int64_t b) {
  std::vector<int32_t> previous(s.steps);
  int32_t last = -1;
  for (int64_t t = 0; t < s.steps; ++t) {
    if (s.starts_at(t, b)) last = -1;
    previous[t] = last;
    if (s.is_valid(t, b)) last = static_cast<int32_t>(t);
  }
  return previous;
}

// One valid step of one row, units [j0, j0 + n): g (n) = dL/dstate after the step, in place
// to dL/dstate before it; prev (n) the state before it.
// d_bias (fused gates): (G*n) sums of each gate's d_k over this block's units, accumulated.
inline void backward_row(const Lanes& s, const BackwardArgs& a, int64_t row, int64_t j0,
                         int64_t n, const float* __restrict prev, float* __restrict g,
                         float* __restrict d_bias) {
  const int64_t H = s.hidden;
  if (a.d_hs != nullptr) {
    const float* __restrict d_out = a.d_hs + s.at(row, j0);
#pragma GCC ivdep
    for (int64_t j = 0; j < n * s.per(); ++j) g[j] += d_out[j];
  }
  if (s.kind == kMinGru) {
    const float* __restrict k_z = a.x1 + s.gates_at(row, j0);
    const float* __restrict k_h = k_z + H;
    const float* __restrict b_z = a.x2 + j0;
    const float* __restrict b_h = b_z + H;
    float* __restrict d_k_z = a.d_x1 + s.gates_at(row, j0);
    float* __restrict d_k_h = d_k_z + H;
#pragma GCC ivdep
    for (int64_t j = 0; j < n; ++j) {
      const float z = sigmoid_f(k_z[j] + b_z[j]);
      const float d_z = g[j] * (k_h[j] + b_h[j] - prev[j]);  // d_b * h~ - d_a
      d_k_z[j] = d_z * z * (1.0f - z);
      d_k_h[j] = g[j] * z;
      d_bias[j] += d_k_z[j];
      d_bias[n + j] += d_k_h[j];
      g[j] *= 1.0f - z;
    }
  } else if (s.kind == kMinLstm) {  // through f' = f / (f + i), i' = i / (f + i), sigmoids
    const float* __restrict k_f = a.x1 + s.gates_at(row, j0);
    const float* __restrict b_f = a.x2 + j0;
    float* __restrict d_k = a.d_x1 + s.gates_at(row, j0);
#pragma GCC ivdep
    for (int64_t j = 0; j < n; ++j) {
      const float f = sigmoid_f(k_f[j] + b_f[j]), i = sigmoid_f(k_f[H + j] + b_f[H + j]);
      const float total = f + i, f_norm = f / total, i_norm = i / total;
      const float candidate = k_f[2 * H + j] + b_f[2 * H + j];
      // d_a = g * prev (dL/df'), d_b = g (dL/d(i' h~)): dL/di' = g * candidate.
      const float spread = (g[j] * prev[j] - g[j] * candidate) / total;
      d_k[j] = spread * i_norm * f * (1.0f - f);
      d_k[H + j] = -spread * f_norm * i * (1.0f - i);
      d_k[2 * H + j] = g[j] * i_norm;
      d_bias[j] += d_k[j];
      d_bias[n + j] += d_k[H + j];
      d_bias[2 * n + j] += d_k[2 * H + j];
      g[j] *= f_norm;
    }
  } else if (s.kind == kAffine) {
    const float* __restrict coef_a = a.x1 + s.at(row, j0);
    float* __restrict d_a = a.d_x1 + s.at(row, j0);
    float* __restrict d_b = a.d_x2 + s.at(row, j0);
#pragma GCC ivdep
    for (int64_t j = 0; j < n; ++j) {
      d_a[j] = g[j] * prev[j];
      d_b[j] = g[j];
      g[j] *= coef_a[j];
    }
  } else {  // complex: d_a = g * prev, d_b = g, g = g * a (no conjugation: JAX's convention)
    const float* __restrict coef_a = a.x1 + s.at(row, j0);
    float* __restrict d_a = a.d_x1 + s.at(row, j0);
    float* __restrict d_b = a.d_x2 + s.at(row, j0);
#pragma GCC ivdep
    for (int64_t j = 0; j < 2 * n; j += 2) {
      const float g_re = g[j], g_im = g[j + 1];
      d_a[j] = g_re * prev[j] - g_im * prev[j + 1];
      d_a[j + 1] = g_re * prev[j + 1] + g_im * prev[j];
      d_b[j] = g_re;
      d_b[j + 1] = g_im;
      g[j] = g_re * coef_a[j] - g_im * coef_a[j + 1];
      g[j + 1] = g_re * coef_a[j + 1] + g_im * coef_a[j];
    }
  }
}

void zero_row_gradients(const Lanes& s, const BackwardArgs& a, int64_t row, int64_t j0,
                        int64_t n) {
  if (s.gates() > 0) {
    for (int64_t gate = 0; gate < s.gates(); ++gate) {
      std::fill_n(a.d_x1 + s.gates_at(row, j0) + gate * s.hidden, n, 0.0f);
    }
  } else {
    std::fill_n(a.d_x1 + s.at(row, j0), n * s.per(), 0.0f);
    std::fill_n(a.d_x2 + s.at(row, j0), n * s.per(), 0.0f);
  }
}

void backward_block(const Lanes& s, const BackwardArgs& a, const Block& blk) {
  const int64_t n = blk.j1 - blk.j0, rows = blk.b1 - blk.b0, floats = n * s.per();
  std::vector<std::vector<int32_t>> previous;
  for (int64_t b = blk.b0; b < blk.b1; ++b) previous.push_back(previous_steps(s, b));
  std::vector<float> buffers(2 * rows * floats + s.gates() * n);
  float* grads = buffers.data();                 // (rows, n) elements: dL/dstate
  float* d_h0 = buffers.data() + rows * floats;  // (rows, n) elements
  float* d_bias = d_h0 + rows * floats;          // (G*n): the fused gates' column sums
  for (int64_t b = blk.b0; b < blk.b1; ++b) {
    std::memcpy(grads + (b - blk.b0) * floats, a.d_final + s.at(b, blk.j0),
                floats * sizeof(float));
  }
  for (int64_t t = s.steps - 1; t >= 0; --t) {
    for (int64_t b = blk.b0; b < blk.b1; ++b) {
      float* __restrict g = grads + (b - blk.b0) * floats;
      const int64_t row = s.row(t, b);
      if (s.is_valid(t, b)) {
        const int32_t p = previous[b - blk.b0][t];
        const float* prev = p < 0 ? a.h0 + s.at(b, blk.j0) : a.hs + s.at(s.row(p, b), blk.j0);
        backward_row(s, a, row, blk.j0, n, prev, g, d_bias);
      } else {
        zero_row_gradients(s, a, row, blk.j0, n);
      }
      if (s.starts_at(t, b)) {
        float* __restrict d = d_h0 + (b - blk.b0) * floats;
#pragma GCC ivdep
        for (int64_t j = 0; j < floats; ++j) {
          d[j] += g[j];
          g[j] = 0.0f;
        }
      }
    }
  }
  for (int64_t b = blk.b0; b < blk.b1; ++b) {
    std::memcpy(a.d_h0 + s.at(b, blk.j0), d_h0 + (b - blk.b0) * floats, floats * sizeof(float));
  }
  // This block's slot: its units' columns of each gate, zeros elsewhere.
  float* slot = a.bias_partials + blk.index * s.gates() * s.hidden;
  for (int64_t gate = 0; gate < s.gates(); ++gate) {
    std::memcpy(slot + gate * s.hidden + blk.j0, d_bias + gate * n, n * sizeof(float));
  }
}

// d_bias (2H,) = the blocks' partial sums, added in block order (deterministic).
void sum_bias_partials(const float* partials, int blocks, int64_t width, float* d_bias) {
  std::fill_n(d_bias, width, 0.0f);
  for (int i = 0; i < blocks; ++i) {
#pragma GCC ivdep
    for (int64_t j = 0; j < width; ++j) d_bias[j] += partials[i * width + j];
  }
}

ffi::Error guarded(const char* what, const std::function<void()>& body) {
  try {
    body();
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("rnn_jax fused_cpu linear ") + what + ": " +
                                e.what());
  }
  return ffi::Error::Success();
}

const float* fdata(ffi::AnyBuffer b) {
  return b.element_count() == 0 ? nullptr : static_cast<const float*>(b.untyped_data());
}
template <class R>
float* fresult(R& r) {
  return r->element_count() == 0 ? nullptr : static_cast<float*>(r->untyped_data());
}
const uint8_t* flags(ffi::AnyBuffer b) {
  return b.element_count() == 0 ? nullptr : static_cast<const uint8_t*>(b.untyped_data());
}

Lanes lanes_of(int32_t kind, ffi::AnyBuffer h0, ffi::AnyBuffer x1, ffi::AnyBuffer valid,
               ffi::AnyBuffer starts, ffi::AnyBuffer lengths, bool batch_major, bool reverse) {
  if (kind != kMinGru && kind != kAffine && kind != kComplex && kind != kMinLstm) {
    throw std::invalid_argument("unknown kind " + std::to_string(kind));
  }
  const auto d = x1.dimensions();
  const int64_t steps = batch_major ? d[1] : d[0], batch = batch_major ? d[0] : d[1];
  const int32_t* lens =
      lengths.element_count() == 0 ? nullptr : static_cast<const int32_t*>(lengths.untyped_data());
  return {kind, steps, batch, h0.dimensions()[1], flags(valid), flags(starts), batch_major,
          reverse, lens};
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::AnyBuffer x1, ffi::AnyBuffer x2, ffi::AnyBuffer h0,
                   ffi::AnyBuffer valid, ffi::AnyBuffer starts, ffi::AnyBuffer lengths,
                   ffi::Result<ffi::AnyBuffer> hs, ffi::Result<ffi::AnyBuffer> final_state,
                   int32_t kind, bool batch_major, bool reverse) {
  return guarded("forward", [&] {
    const Lanes s = lanes_of(kind, h0, x1, valid, starts, lengths, batch_major, reverse);
    const ForwardArgs a{fdata(x1), fdata(x2), fdata(h0), fresult(hs), fresult(final_state)};
    prefer_huge_pages(hs->untyped_data(), hs->size_bytes());
    Team team(pool);
    over_blocks(s, team, blocks_of(s, team), [&](const Block& blk) { forward_block(s, a, blk); });
  });
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::AnyBuffer x1, ffi::AnyBuffer x2,
                    ffi::AnyBuffer h0, ffi::AnyBuffer valid, ffi::AnyBuffer starts,
                    ffi::AnyBuffer lengths,
                    ffi::AnyBuffer hs, ffi::AnyBuffer d_hs, ffi::AnyBuffer d_final,
                    ffi::Result<ffi::AnyBuffer> d_x1, ffi::Result<ffi::AnyBuffer> d_x2,
                    ffi::Result<ffi::AnyBuffer> d_h0, int32_t kind, bool batch_major,
                    bool reverse) {
  return guarded("backward", [&] {
    const Lanes s = lanes_of(kind, h0, x1, valid, starts, lengths, batch_major, reverse);
    prefer_huge_pages(d_x1->untyped_data(), d_x1->size_bytes());
    prefer_huge_pages(d_x2->untyped_data(), d_x2->size_bytes());
    Team team(pool);
    const Blocks blocks = blocks_of(s, team);
    // Zeros outside each block's units: the slots are summed whole.
    const int64_t width = s.gates() * s.hidden;  // the bias's (0 unless fused gates)
    std::vector<float> partials(blocks.count() * width, 0.0f);
    const BackwardArgs a{fdata(x1),     fdata(x2),     fdata(h0),     fdata(hs),
                         fdata(d_hs),   fdata(d_final), fresult(d_x1), fresult(d_x2),
                         fresult(d_h0), partials.data()};
    over_blocks(s, team, blocks, [&](const Block& blk) { backward_block(s, a, blk); });
    if (width > 0) sum_bias_partials(partials.data(), blocks.count(), width, a.d_x2);
  });
}

}  // namespace

extern "C" void rnn_jax_linear_set_num_threads(int n) { requested_threads.store(n < 0 ? 0 : n); }

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnJaxLinearForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // x1: k (T, B, 2H) or a (T, B, H)
                                  .Arg<ffi::AnyBuffer>()  // x2: bias (2H,) or b (T, B, H)
                                  // (complex64 a, b, h0, hs for kComplex)
                                  .Arg<ffi::AnyBuffer>()  // h0 (B, H)
                                  .Arg<ffi::AnyBuffer>()  // valid (T, B) uint8 or (0,)
                                  .Arg<ffi::AnyBuffer>()  // starts (T, B) uint8 or (0,)
                                  .Arg<ffi::AnyBuffer>()  // lengths (B,) int32 or (0,)
                                  .Ret<ffi::AnyBuffer>()  // hs (T, B, H) or (B, T, H)
                                  .Ret<ffi::AnyBuffer>()  // final state (B, H)
                                  .Attr<int32_t>("kind")
                                  .Attr<bool>("batch_major")
                                  .Attr<bool>("reverse"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnJaxLinearBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // x1
                                  .Arg<ffi::AnyBuffer>()  // x2
                                  .Arg<ffi::AnyBuffer>()  // h0
                                  .Arg<ffi::AnyBuffer>()  // valid
                                  .Arg<ffi::AnyBuffer>()  // starts
                                  .Arg<ffi::AnyBuffer>()  // lengths
                                  .Arg<ffi::AnyBuffer>()  // hs (the forward's output)
                                  .Arg<ffi::AnyBuffer>()  // d_hs (T, B, H) or (0,)
                                  .Arg<ffi::AnyBuffer>()  // d_final (B, H)
                                  .Ret<ffi::AnyBuffer>()  // d_x1, like x1
                                  .Ret<ffi::AnyBuffer>()  // d_x2, like x2
                                  .Ret<ffi::AnyBuffer>()  // d_h0 (B, H)
                                  .Attr<int32_t>("kind")
                                  .Attr<bool>("batch_major")
                                  .Attr<bool>("reverse"));
