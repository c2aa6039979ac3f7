// XLA FFI handlers running oneDNN's fused RNN primitives (vanilla_rnn tanh/relu, lstm,
// lbr_gru) over a whole sequence: forward_training (keeping oneDNN's workspace as the
// residual) and the fused backward. Built on first use by rnn_jax/backends/build.py
// against jax.ffi.include_dir() and the headers of onednn-devel-cpu-gomp 2023.2 (oneDNN 3.2).
//
// Layouts (everything float32, one layer, one direction):
//   xs     (T, B, I) "tnc", or (B, T, I) "ntc" with batch_major   -> oneDNN src_layer
//   h0, c0 (B, H)                                                   -> src_iter(_c), ldnc
//   w_x    (I, G*H), w_h (H, G*H): oneDNN's ldigo with L = D = 1, gates in oneDNN's order
//   bias   (Gb, H): ldgo; Gb = G, or G + 1 for lbr_gru
//   hs     like xs with H features; hT, cT (B, H)
// The Python side (onednn.py) permutes gates and packs biases; c0/cT/d_c0/d_cT are empty
// arrays for cells without a cell state.

#include <omp.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

namespace {

enum Kind : int32_t { kTanh = 0, kRelu = 1, kLstm = 2, kGru = 3 };

struct Key {
  int32_t kind;
  bool reverse, batch_major;
  int64_t steps, batch, input, hidden;
  bool operator<(const Key& o) const {
    return std::tie(kind, reverse, batch_major, steps, batch, input, hidden) <
           std::tie(o.kind, o.reverse, o.batch_major, o.steps, o.batch, o.input, o.hidden);
  }
};

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

int64_t num_gates(int32_t kind) { return kind == kLstm ? 4 : kind == kGru ? 3 : 1; }
int64_t num_bias_gates(int32_t kind) { return kind == kGru ? 4 : num_gates(kind); }

// The user-side memory descriptors (what XLA's buffers hold) and the three primitives:
// forward_training (writes the workspace), backward, forward_inference (no workspace: the
// forward of a call nobody differentiates).
struct Prims {
  memory::desc src_layer, dst_layer, iter, w_layer, w_iter, bias;
  dnnl::primitive_desc fwd_pd, bwd_pd, infer_pd;
  dnnl::primitive fwd, bwd, infer;
};

template <class FwdPd, class BwdPd, class Fwd, class Bwd, class... Extra>
void make_pds(Prims& p, const memory::desc& wl_any, const memory::desc& wi_any,
              dnnl::rnn_direction dir, const dnnl::primitive_attr& attr, Extra... extra) {
  auto& eng = cpu_engine();
  FwdPd fwd_pd(eng, dnnl::prop_kind::forward_training, extra..., dir, p.src_layer, p.iter,
               wl_any, wi_any, p.bias, p.dst_layer, p.iter, attr);
  BwdPd bwd_pd(eng, dnnl::prop_kind::backward, extra..., dir, p.src_layer, p.iter, wl_any,
               wi_any, p.bias, p.dst_layer, p.iter, p.src_layer, p.iter, wl_any, wi_any, p.bias,
               p.dst_layer, p.iter, fwd_pd, attr);
  FwdPd infer_pd(eng, dnnl::prop_kind::forward_inference, extra..., dir, p.src_layer, p.iter,
                 wl_any, wi_any, p.bias, p.dst_layer, p.iter, attr);
  p.fwd_pd = fwd_pd;
  p.bwd_pd = bwd_pd;
  p.infer_pd = infer_pd;
  p.fwd = Fwd(fwd_pd);
  p.bwd = Bwd(bwd_pd);
  p.infer = Fwd(infer_pd);
}

void make_lstm_pds(Prims& p, const memory::desc& wl_any, const memory::desc& wi_any,
                   dnnl::rnn_direction dir, const dnnl::primitive_attr& attr) {
  auto& eng = cpu_engine();
  const auto& it = p.iter;
  dnnl::lstm_forward::primitive_desc fwd_pd(eng, dnnl::prop_kind::forward_training, dir,
                                            p.src_layer, it, it, wl_any, wi_any, p.bias,
                                            p.dst_layer, it, it, attr);
  dnnl::lstm_backward::primitive_desc bwd_pd(
      eng, dnnl::prop_kind::backward, dir, p.src_layer, it, it, wl_any, wi_any, p.bias,
      p.dst_layer, it, it, p.src_layer, it, it, wl_any, wi_any, p.bias, p.dst_layer, it, it,
      fwd_pd, attr);
  dnnl::lstm_forward::primitive_desc infer_pd(eng, dnnl::prop_kind::forward_inference, dir,
                                              p.src_layer, it, it, wl_any, wi_any, p.bias,
                                              p.dst_layer, it, it, attr);
  p.fwd_pd = fwd_pd;
  p.bwd_pd = bwd_pd;
  p.infer_pd = infer_pd;
  p.fwd = dnnl::lstm_forward(fwd_pd);
  p.bwd = dnnl::lstm_backward(bwd_pd);
  p.infer = dnnl::lstm_forward(infer_pd);
}

std::unique_ptr<Prims> build(const Key& k) {
  auto p = std::make_unique<Prims>();
  const auto seq = k.batch_major ? tag::ntc : tag::tnc;
  const int64_t gates = num_gates(k.kind);
  p->src_layer = memory::desc({k.steps, k.batch, k.input}, dt::f32, seq);
  p->dst_layer = memory::desc({k.steps, k.batch, k.hidden}, dt::f32, seq);
  p->iter = memory::desc({1, 1, k.batch, k.hidden}, dt::f32, tag::ldnc);
  p->w_layer = memory::desc({1, 1, k.input, gates, k.hidden}, dt::f32, tag::ldigo);
  p->w_iter = memory::desc({1, 1, k.hidden, gates, k.hidden}, dt::f32, tag::ldigo);
  p->bias = memory::desc({1, 1, num_bias_gates(k.kind), k.hidden}, dt::f32, tag::ldgo);
  // "any" lets each primitive pick its preferred weights layout (ldgoi for the backward);
  // the handlers reorder into it when it differs from ldigo.
  memory::desc wl_any({1, 1, k.input, gates, k.hidden}, dt::f32, tag::any);
  memory::desc wi_any({1, 1, k.hidden, gates, k.hidden}, dt::f32, tag::any);
  const auto dir = k.reverse ? dnnl::rnn_direction::unidirectional_right2left
                             : dnnl::rnn_direction::unidirectional_left2right;
  // A scratchpad per call (not the library's shared one): XLA may run two calls at once.
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  switch (k.kind) {
    case kTanh:
    case kRelu:
      make_pds<dnnl::vanilla_rnn_forward::primitive_desc,
               dnnl::vanilla_rnn_backward::primitive_desc, dnnl::vanilla_rnn_forward,
               dnnl::vanilla_rnn_backward>(
          *p, wl_any, wi_any, dir, attr,
          k.kind == kTanh ? dnnl::algorithm::eltwise_tanh : dnnl::algorithm::eltwise_relu);
      break;
    case kLstm:
      make_lstm_pds(*p, wl_any, wi_any, dir, attr);
      break;
    case kGru:
      make_pds<dnnl::lbr_gru_forward::primitive_desc, dnnl::lbr_gru_backward::primitive_desc,
               dnnl::lbr_gru_forward, dnnl::lbr_gru_backward>(*p, wl_any, wi_any, dir, attr);
      break;
    default:
      throw std::invalid_argument("unknown cell kind " + std::to_string(k.kind));
  }
  return p;
}

// Primitive descriptors and primitives, built once per shape (building costs far more
// than running a short sequence).
const Prims& prims_for(const Key& k) {
  static std::mutex mutex;
  static std::map<Key, std::unique_ptr<Prims>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = cache[k];
  if (!slot) slot = build(k);
  return *slot;
}

Key key_of(int32_t kind, bool reverse, bool batch_major, ffi::AnyBuffer::Dimensions xs,
           ffi::AnyBuffer::Dimensions h0) {
  Key k{kind, reverse, batch_major, xs[0], xs[1], xs[2], h0[1]};
  if (batch_major) std::swap(k.steps, k.batch);
  return k;
}

memory::desc arg_md(const dnnl::primitive_desc& pd, int arg) {
  return pd.query_md(dnnl::query::exec_arg_md, arg);
}

void* data(ffi::AnyBuffer b) { return b.untyped_data(); }
template <class R>
void* data(R& r) { return r->untyped_data(); }

// `ptr` viewed as `user`, reordered into `wanted` (a fresh buffer) when the layouts differ.
memory as_layout(const memory::desc& user, const memory::desc& wanted, void* ptr,
                 dnnl::stream& s) {
  memory m(user, cpu_engine(), ptr);
  if (user == wanted) return m;
  memory out(wanted, cpu_engine());
  dnnl::reorder(m, out).execute(s, m, out);
  return out;
}

// A zeroed gradient buffer in the primitive's layout (oneDNN *adds* weight gradients).
memory zeroed(const memory::desc& user, const memory::desc& wanted, void* ptr) {
  memory m = user == wanted ? memory(user, cpu_engine(), ptr) : memory(wanted, cpu_engine());
  std::memset(m.get_data_handle(), 0, wanted.get_size());
  return m;
}

void copy_back(memory& from, const memory::desc& user, void* ptr, dnnl::stream& s) {
  if (from.get_data_handle() == ptr) return;
  memory to(user, cpu_engine(), ptr);
  dnnl::reorder(from, to).execute(s, from, to);
}

// OpenMP threads for oneDNN; 0 = OpenMP's default (OMP_NUM_THREADS, else all cores). The
// count is per calling thread in OpenMP, so it is applied on every call, on XLA's thread.
std::atomic<int> num_threads{0};

ffi::Error guarded(const char* what, const std::function<void()>& body) {
  try {
    if (int n = num_threads.load(); n > 0) omp_set_num_threads(n);
    body();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN ") + what + ": " + e.what() +
                                " (status " + std::to_string(e.status) + ")");
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("oneDNN ") + what + ": " + e.what());
  }
  return ffi::Error::Success();
}

// The forward's arguments, which the backward reads too: sequence, states, weights (in
// `pd`'s layout), bias, outputs and workspace.
struct Sequence {
  void *xs, *h0, *c0, *w_x, *w_h, *bias, *hs, *h_last, *c_last, *workspace;
};

std::unordered_map<int, memory> sequence_args(const Prims& p, const dnnl::primitive_desc& pd,
                                              int32_t kind, const Sequence& t,
                                              dnnl::stream& s) {
  auto& eng = cpu_engine();
  std::unordered_map<int, memory> args = {
      {DNNL_ARG_SRC_LAYER, memory(p.src_layer, eng, t.xs)},
      {DNNL_ARG_SRC_ITER, memory(p.iter, eng, t.h0)},
      {DNNL_ARG_WEIGHTS_LAYER, as_layout(p.w_layer, arg_md(pd, DNNL_ARG_WEIGHTS_LAYER), t.w_x, s)},
      {DNNL_ARG_WEIGHTS_ITER, as_layout(p.w_iter, arg_md(pd, DNNL_ARG_WEIGHTS_ITER), t.w_h, s)},
      {DNNL_ARG_BIAS, memory(p.bias, eng, t.bias)},
      {DNNL_ARG_DST_LAYER, memory(p.dst_layer, eng, t.hs)},
      {DNNL_ARG_DST_ITER, memory(p.iter, eng, t.h_last)},
  };
  if (pd.workspace_desc().get_size() > 0) {
    args[DNNL_ARG_WORKSPACE] = memory(pd.workspace_desc(), eng, t.workspace);
  }
  if (kind == kLstm) {
    args[DNNL_ARG_SRC_ITER_C] = memory(p.iter, eng, t.c0);
    args[DNNL_ARG_DST_ITER_C] = memory(p.iter, eng, t.c_last);
  }
  return args;
}

// Runs `prim` with a scratchpad of its own (malloc'ed, not zero-filled).
void execute(const dnnl::primitive& prim, const dnnl::primitive_desc& pd,
             std::unordered_map<int, memory>& args, dnnl::stream& s) {
  std::unique_ptr<uint8_t[]> scratch(new uint8_t[pd.scratchpad_desc().get_size()]);
  args[DNNL_ARG_SCRATCHPAD] = memory(pd.scratchpad_desc(), cpu_engine(), scratch.get());
  prim.execute(s, args);
  s.wait();
}

ffi::Error Forward(ffi::AnyBuffer xs, ffi::AnyBuffer h0, ffi::AnyBuffer c0, ffi::AnyBuffer w_x,
                   ffi::AnyBuffer w_h, ffi::AnyBuffer bias, ffi::Result<ffi::AnyBuffer> hs,
                   ffi::Result<ffi::AnyBuffer> h_last, ffi::Result<ffi::AnyBuffer> c_last,
                   ffi::Result<ffi::AnyBuffer> workspace, int32_t kind, bool reverse,
                   bool batch_major, bool training) {
  return guarded("forward", [&] {
    const Prims& p = prims_for(key_of(kind, reverse, batch_major, xs.dimensions(),
                                      h0.dimensions()));
    dnnl::stream s(cpu_engine());
    Sequence t{data(xs),     data(h0),     data(c0),     data(w_x),    data(w_h),
               data(bias),   data(hs),     data(h_last), data(c_last), data(workspace)};
    const auto& pd = training ? p.fwd_pd : p.infer_pd;
    auto args = sequence_args(p, pd, kind, t, s);
    execute(training ? p.fwd : p.infer, pd, args, s);
  });
}

ffi::Error Backward(ffi::AnyBuffer xs, ffi::AnyBuffer h0, ffi::AnyBuffer c0, ffi::AnyBuffer w_x,
                    ffi::AnyBuffer w_h, ffi::AnyBuffer bias, ffi::AnyBuffer hs,
                    ffi::AnyBuffer h_last, ffi::AnyBuffer c_last, ffi::AnyBuffer workspace,
                    ffi::AnyBuffer d_hs, ffi::AnyBuffer d_h_last, ffi::AnyBuffer d_c_last,
                    ffi::Result<ffi::AnyBuffer> d_xs, ffi::Result<ffi::AnyBuffer> d_h0,
                    ffi::Result<ffi::AnyBuffer> d_c0, ffi::Result<ffi::AnyBuffer> d_w_x,
                    ffi::Result<ffi::AnyBuffer> d_w_h, ffi::Result<ffi::AnyBuffer> d_bias,
                    int32_t kind, bool reverse, bool batch_major) {
  return guarded("backward", [&] {
    const Prims& p = prims_for(key_of(kind, reverse, batch_major, xs.dimensions(),
                                      h0.dimensions()));
    auto& eng = cpu_engine();
    dnnl::stream s(eng);
    const auto& pd = p.bwd_pd;
    Sequence t{data(xs),   data(h0), data(c0),     data(w_x),    data(w_h),
               data(bias), data(hs), data(h_last), data(c_last), data(workspace)};
    auto args = sequence_args(p, pd, kind, t, s);
    memory dwl = zeroed(p.w_layer, arg_md(pd, DNNL_ARG_DIFF_WEIGHTS_LAYER), data(d_w_x));
    memory dwi = zeroed(p.w_iter, arg_md(pd, DNNL_ARG_DIFF_WEIGHTS_ITER), data(d_w_h));
    args[DNNL_ARG_DIFF_WEIGHTS_LAYER] = dwl;
    args[DNNL_ARG_DIFF_WEIGHTS_ITER] = dwi;
    args[DNNL_ARG_DIFF_BIAS] = zeroed(p.bias, p.bias, data(d_bias));
    args[DNNL_ARG_DIFF_SRC_LAYER] = memory(p.src_layer, eng, data(d_xs));
    args[DNNL_ARG_DIFF_SRC_ITER] = memory(p.iter, eng, data(d_h0));
    args[DNNL_ARG_DIFF_DST_LAYER] = memory(p.dst_layer, eng, data(d_hs));
    args[DNNL_ARG_DIFF_DST_ITER] = memory(p.iter, eng, data(d_h_last));
    if (kind == kLstm) {
      args[DNNL_ARG_DIFF_SRC_ITER_C] = memory(p.iter, eng, data(d_c0));
      args[DNNL_ARG_DIFF_DST_ITER_C] = memory(p.iter, eng, data(d_c_last));
    }
    execute(p.bwd, pd, args, s);
    copy_back(dwl, p.w_layer, data(d_w_x), s);
    copy_back(dwi, p.w_iter, data(d_w_h), s);
    s.wait();
  });
}

}  // namespace

extern "C" void rnn_jax_onednn_set_num_threads(int n) { num_threads.store(n < 0 ? 0 : n); }

// The workspace's size in bytes for one shape (the Python side allocates it as a uint8
// result of the forward call), or -1 if oneDNN rejects the shape.
extern "C" int64_t rnn_jax_onednn_workspace_bytes(int32_t kind, int32_t reverse,
                                                  int32_t batch_major, int64_t steps,
                                                  int64_t batch, int64_t input,
                                                  int64_t hidden) {
  try {
    Key k{kind, reverse != 0, batch_major != 0, steps, batch, input, hidden};
    return static_cast<int64_t>(prims_for(k).fwd_pd.workspace_desc().get_size());
  } catch (...) {
    return -1;
  }
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnJaxOnednnForward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // xs
                                  .Arg<ffi::AnyBuffer>()  // h0
                                  .Arg<ffi::AnyBuffer>()  // c0
                                  .Arg<ffi::AnyBuffer>()  // w_x
                                  .Arg<ffi::AnyBuffer>()  // w_h
                                  .Arg<ffi::AnyBuffer>()  // bias
                                  .Ret<ffi::AnyBuffer>()  // hs
                                  .Ret<ffi::AnyBuffer>()  // h_last
                                  .Ret<ffi::AnyBuffer>()  // c_last
                                  .Ret<ffi::AnyBuffer>()  // workspace ((0,) unless training)
                                  .Attr<int32_t>("kind")
                                  .Attr<bool>("reverse")
                                  .Attr<bool>("batch_major")
                                  .Attr<bool>("training"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnJaxOnednnBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // xs
                                  .Arg<ffi::AnyBuffer>()  // h0
                                  .Arg<ffi::AnyBuffer>()  // c0
                                  .Arg<ffi::AnyBuffer>()  // w_x
                                  .Arg<ffi::AnyBuffer>()  // w_h
                                  .Arg<ffi::AnyBuffer>()  // bias
                                  .Arg<ffi::AnyBuffer>()  // hs
                                  .Arg<ffi::AnyBuffer>()  // h_last
                                  .Arg<ffi::AnyBuffer>()  // c_last
                                  .Arg<ffi::AnyBuffer>()  // workspace
                                  .Arg<ffi::AnyBuffer>()  // d_hs
                                  .Arg<ffi::AnyBuffer>()  // d_h_last
                                  .Arg<ffi::AnyBuffer>()  // d_c_last
                                  .Ret<ffi::AnyBuffer>()  // d_xs
                                  .Ret<ffi::AnyBuffer>()  // d_h0
                                  .Ret<ffi::AnyBuffer>()  // d_c0
                                  .Ret<ffi::AnyBuffer>()  // d_w_x
                                  .Ret<ffi::AnyBuffer>()  // d_w_h
                                  .Ret<ffi::AnyBuffer>()  // d_bias
                                  .Attr<int32_t>("kind")
                                  .Attr<bool>("reverse")
                                  .Attr<bool>("batch_major"));
