// What rnn_jax's CPU FFI kernels share (fused_rnn.cc, fused_linear.cc): element-wise
// functions g++ vectorises, denormal flushing, huge pages for large outputs, the team of
// threads from XLA's intra-op pool (work-sharing tasks and gangs with a barrier) and scratch
// buffers kept between calls.
// Everything is in an anonymous namespace: each kernel library has its own copy (and its own
// requested thread count, set through its rnn_jax_*_set_num_threads export).
//
// Threads: XLA's intra-op thread pool (the FFI ThreadPool context), the calling thread
// taking part too; no thread of our own, so nothing oversubscribes XLA's pool. The count is
// min(pool size, the requested count if > 0). Work-sharing loops claim tasks from an atomic
// counter; a gang runs on whoever joins within 2 ms (at least the caller), so a busy pool
// delays nothing and nothing can deadlock.

#pragma once

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace {

namespace ffi = xla::ffi;

// ---------------------------------------------------------------------------------------
// Element-wise functions, written so that g++ vectorises loops over them (no libm calls).

// exp(x), Cephes' single-precision polynomial (about 1 ulp on the clamped range); NaN in,
// NaN out. x is clamped to [-87.3, 88.3] so the result stays normal and finite.
inline float exp_f(float x) {
  x = std::min(std::max(x, -87.3f), 88.3f);
  // n = round(x / ln 2) by the 1.5 * 2^23 trick (std::floor would be a libm call here).
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

inline float sigmoid_f(float x) { return 1.0f / (1.0f + exp_f(-x)); }

// tanh(x) = (1 - e) / (1 + e) with e = exp(-2|x|); below |x| = 0.04 its Taylor series
// (x - x^3/3 + 2x^5/15, error < 1e-11), where 1 - e would lose relative precision.
inline float tanh_f(float x) {
  const float a = std::fabs(x);
  const float e = exp_f(-2.0f * a);
  const float big = std::copysign((1.0f - e) / (1.0f + e), x);
  const float x2 = x * x;
  const float small = x + x * x2 * (-1.0f / 3.0f + x2 * (2.0f / 15.0f));
  return a < 0.04f ? small : big;
}


// Asks for transparent huge pages on an output buffer before a kernel first touches it:
// XLA hands out a fresh mapping for a large buffer on every call, whose 4 KB pages would
// each fault in (and be zeroed) on first touch, which costs a sequence sweep as much as
// its arithmetic. Only whole 2 MB pages inside the buffer; a hint, so its result is ignored.
void prefer_huge_pages(void* data, size_t bytes) {
#if defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = 2 << 20;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#endif
}

// ---------------------------------------------------------------------------------------
// The team: `count` tasks run by the calling thread and up to threads-1 tasks on XLA's pool.

inline std::atomic<int> requested_threads{0};

// Denormals flushed to zero while the kernel runs on a thread, as XLA's CPU code does (a
// long sequence's decaying gradients would otherwise take the slow denormal paths); the
// thread's previous mode is restored after.
#if defined(__x86_64__) || defined(__i386__)
class FlushDenormals {
 public:
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040); }  // FTZ | DAZ
  ~FlushDenormals() { _mm_setcsr(saved_); }

 private:
  unsigned int saved_;
};
#else
struct FlushDenormals {};  // other CPUs: the thread's own mode
#endif

struct TeamState {
  std::atomic<int> next{0}, done{0};
  std::atomic<bool> failed{false};
  std::string error;
  std::atomic_flag error_lock = ATOMIC_FLAG_INIT;
  int count = 0;
  std::function<void(int)> body;
};

void run_tasks(TeamState& st) {
  FlushDenormals flush;
  // oneDNN's sgemm would start an OpenMP team of its own in every task: one thread each.
#ifdef _OPENMP
  const int omp_before = omp_get_max_threads();
  omp_set_num_threads(1);
#endif
  for (;;) {
    const int i = st.next.fetch_add(1, std::memory_order_relaxed);
    if (i >= st.count) break;
    if (!st.failed.load(std::memory_order_relaxed)) {
      try {
        st.body(i);
      } catch (const std::exception& e) {
        if (!st.error_lock.test_and_set()) st.error = e.what();
        st.failed.store(true);
      }
    }
    st.done.fetch_add(1, std::memory_order_release);
  }
#ifdef _OPENMP
  omp_set_num_threads(omp_before);
#endif
}

// A spinning barrier for `count` threads (yielding after a short spin: with more runnable
// threads than cores a pure spin would starve the thread it waits for).
class Barrier {
 public:
  explicit Barrier(int count) : count_(count) {}
  void wait() {
    if (count_ <= 1) return;
    const int generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) == count_ - 1) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
      return;
    }
    for (int spin = 0; generation_.load(std::memory_order_acquire) == generation; ++spin) {
      if (spin > 200) std::this_thread::yield();
    }
  }

 private:
  int count_;
  std::atomic<int> arrived_{0}, generation_{0};
};

// A gang: threads that run one body together, so that it may use a barrier. Helpers from
// XLA's pool join within a short wait or not at all (the pool may be busy, e.g. with the
// other direction of a bidirectional layer); the gang is whoever joined, at least the caller.
struct GangState {
  static constexpr int kClosed = 1 << 20;
  std::atomic<int> joined{1}, finished{0}, size{-1};
  std::unique_ptr<Barrier> barrier;
  std::function<void(int, int, Barrier&)> body;  // (index, gang size, barrier)
};

void gang_member(GangState& st, int index) {
  FlushDenormals flush;
#ifdef _OPENMP
  const int omp_before = omp_get_max_threads();
  omp_set_num_threads(1);
#endif
  int size;
  while ((size = st.size.load(std::memory_order_acquire)) < 0) std::this_thread::yield();
  st.body(index, size, *st.barrier);
#ifdef _OPENMP
  omp_set_num_threads(omp_before);
#endif
}

class Team {
 public:
  Team(ffi::ThreadPool pool) : pool_(pool) {
    const int64_t available = std::max<int64_t>(1, pool.num_threads());
    const int asked = requested_threads.load();
    threads_ = static_cast<int>(asked > 0 ? std::min<int64_t>(asked, available) : available);
  }
  int threads() const { return threads_; }

  // body(i) for i in [0, count); returns when all have run; rethrows a task's error.
  void parallel(int count, std::function<void(int)> body) {
    auto st = std::make_shared<TeamState>();
    st->count = count;
    st->body = std::move(body);
    const int helpers = std::min(threads_, count) - 1;
    for (int k = 0; k < helpers; ++k) pool_.Schedule([st] { run_tasks(*st); });
    run_tasks(*st);
    while (st->done.load(std::memory_order_acquire) < count) std::this_thread::yield();
    if (st->failed.load()) throw std::runtime_error(st->error);
  }

  // body(index, size, barrier) on a gang of up to `wanted` threads; returns the gang size.
  int gang(int wanted, std::function<void(int, int, Barrier&)> body) {
    wanted = std::max(1, std::min(wanted, threads_));
    auto st = std::make_shared<GangState>();
    st->body = std::move(body);
    for (int k = 1; k < wanted; ++k) {
      pool_.Schedule([st, wanted] {
        const int index = st->joined.fetch_add(1, std::memory_order_acq_rel);
        if (index >= wanted) return;  // closed, or not needed
        gang_member(*st, index);
        st->finished.fetch_add(1, std::memory_order_release);
      });
    }
    // Wait up to 2 ms for the helpers, then close the gang to latecomers.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(2);
    int size = st->joined.load(std::memory_order_acquire);
    while (size < wanted) {
      if (std::chrono::steady_clock::now() > deadline &&
          st->joined.compare_exchange_strong(size, GangState::kClosed)) {
        break;
      }
      std::this_thread::yield();
      size = st->joined.load(std::memory_order_acquire);
    }
    size = std::min(size, wanted);
    st->barrier = std::make_unique<Barrier>(size);
    st->size.store(size, std::memory_order_release);
    gang_member(*st, 0);
    while (st->finished.load(std::memory_order_acquire) < size - 1) std::this_thread::yield();
    return size;
  }

 private:
  ffi::ThreadPool pool_;
  int threads_ = 1;
};

// Scratch buffers kept between calls: a fresh allocation of a long sequence's tens of MB is
// a fresh mmap whose every page faults in on first touch (as much time as the product that
// fills it). A call takes the smallest free buffer that fits (or a new one) and returns it
// when done; at most four are kept.
class Scratch {
 public:
  explicit Scratch(size_t floats) {
    if (floats == 0) return;
    std::lock_guard<std::mutex> lock(mutex());
    auto& pool = free_list();
    auto best = pool.end();
    for (auto it = pool.begin(); it != pool.end(); ++it) {
      if (it->size() >= floats && (best == pool.end() || it->size() < best->size())) best = it;
    }
    if (best != pool.end()) {
      buffer_ = std::move(*best);
      pool.erase(best);
    }
    if (buffer_.size() < floats) buffer_ = std::vector<float>(floats);
  }
  ~Scratch() {
    if (buffer_.empty()) return;
    std::lock_guard<std::mutex> lock(mutex());
    auto& pool = free_list();
    pool.push_back(std::move(buffer_));
    if (pool.size() > kPoolSize) {  // drop the smallest
      auto smallest = std::min_element(pool.begin(), pool.end(),
                                       [](auto& x, auto& y) { return x.size() < y.size(); });
      pool.erase(smallest);
    }
  }
  float* get() { return buffer_.empty() ? nullptr : buffer_.data(); }

 private:
  static constexpr size_t kPoolSize = 4;
  static std::mutex& mutex() {
    static std::mutex m;
    return m;
  }
  static std::vector<std::vector<float>>& free_list() {
    static std::vector<std::vector<float>> pool;
    return pool;
  }
  std::vector<float> buffer_;
};

// [begin, end) of chunk i when n items are split into `parts` near-equal chunks.
inline int64_t chunk_begin(int64_t n, int parts, int i) { return n * i / parts; }

}  // namespace
