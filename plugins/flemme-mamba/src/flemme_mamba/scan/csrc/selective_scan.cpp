// Selective scan (Mamba-1) forward and backward for the CPU, fp32 and fp64.
//
// Plain C++17 with a C ABI and no torch headers: it compiles in about a second (the
// torch extension headers alone take 40-50 s), and Python calls it through ctypes with
// the tensors' data pointers. Layouts (all contiguous, N padded to a multiple of 8 by
// the caller with A = 0, B = C = 0 in the padding, which keeps the padded states at 0):
//   u, dt, out, du, ddt, dout : (batch, channels, L)
//   A, dA : (channels, N) / (batch, channels, N)     D : (channels), dD : (batch, channels)
//   B, C, dB, dC : (batch, groups, L, N)  (time-major so the state loop is contiguous)
//   ckpt : (batch, channels, n_chunks, N), the state before each chunk of `chunk` steps.
// Recurrence: h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t;  y_t = C_t . h_t + D u_t.
// The per-step scalar work (softplus of the step size, the silu(z) gate) is left to
// vectorised PyTorch ops around the kernel: done here it would cost more than the scan.
// The backward recomputes each chunk's states from its checkpoint, then runs the reverse
// scan dh_t = C_t dy_t + a_{t+1} dh_{t+1}. Parallel over channels (forward) or over the
// channels of one B/C group with per-thread dB/dC buffers summed in a fixed order
// (backward), so results do not depend on thread timing.
#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>
#if defined(__AVX2__)
#include <immintrin.h>
#endif
#if defined(_OPENMP)
#include <omp.h>
#endif

namespace {

template <class S> struct Vec;
template <> struct Vec<float> {
  typedef float V __attribute__((vector_size(32)));
  typedef int32_t I __attribute__((vector_size(32)));
  static constexpr int W = 8;
};
template <> struct Vec<double> {
  typedef double V __attribute__((vector_size(32)));
  typedef int64_t I __attribute__((vector_size(32)));
  static constexpr int W = 4;
};

template <class S> inline typename Vec<S>::V vload(const S* p) {
  typename Vec<S>::V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <class S> inline void vstore(S* p, typename Vec<S>::V v) { std::memcpy(p, &v, sizeof v); }
template <class S> inline S hsum(typename Vec<S>::V v) {
  S s = 0;
  for (int i = 0; i < Vec<S>::W; ++i) s += v[i];
  return s;
}

// 2^x over 8 floats: x = k + f with k = round(x), f in [-0.5, 0.5], a degree-6 minimax
// polynomial for 2^f (relative error 2e-9, about 1 ulp once rounded to float) and k put
// into the exponent bits. Plain vector arithmetic: no libmvec, no -ffast-math. x is first
// clamped to [-150, 128] (the integer trick needs |x| < 2^22); below -126.5 the power
// of two is 0, so the result is 0 as exp underflows.
// Clamps as single min/max instructions where available (gcc does not turn the vector
// ternaries into them without -ffast-math).
inline Vec<float>::V vclamp(Vec<float>::V x, float lo, float hi) {
#if defined(__AVX2__)
  return (Vec<float>::V)_mm256_min_ps(_mm256_max_ps((__m256)x, _mm256_set1_ps(lo)), _mm256_set1_ps(hi));
#else
  typedef Vec<float>::V V;
  const V l = V{} + lo, h = V{} + hi;
  x = l > x ? l : x;
  return h < x ? h : x;
#endif
}
inline Vec<float>::I vmax(Vec<float>::I k, int32_t lo) {
#if defined(__AVX2__)
  return (Vec<float>::I)_mm256_max_epi32((__m256i)k, _mm256_set1_epi32(lo));
#else
  const Vec<float>::I l = Vec<float>::I{} + lo;
  return l > k ? l : k;
#endif
}

inline Vec<float>::V vexp2(Vec<float>::V x) {
  typedef Vec<float>::V V;
  typedef Vec<float>::I I;
  const V magic = V{} + 12582912.0f;  // 1.5 * 2^23
  x = vclamp(x, -150.0f, 128.0f);
  const V t = x + magic;  // round(x) in the low mantissa bits
  const V f = x - (t - magic);
  V p = V{} + 1.5350867241818895e-4f;
  p = p * f + 1.3399972532704002e-3f;
  p = p * f + 9.6184701687110630e-3f;
  p = p * f + 5.5503286472862170e-2f;
  p = p * f + 2.4022647064058977e-1f;
  p = p * f + 6.9314720581832670e-1f;
  p = p * f + 1.0f;
  const I k = vmax((I)t - (I)magic, -127);  // 2^-127 -> biased exponent 0 -> scale 0
  return p * (V)((k + 127) << 23);
}

// fp64 is for gradient checks, not speed: the libm exp2 lane by lane.
inline Vec<double>::V vexp2(Vec<double>::V x) {
  Vec<double>::V r;
  for (int i = 0; i < 4; ++i) r[i] = std::exp2(x[i]);
  return r;
}

constexpr double kLog2e = 1.4426950408889634;

}  // namespace

extern "C" {

struct ScanArgs {
  const void *u, *dt, *A, *B, *C, *D;  // D may be null
  void *out, *ckpt;                     // forward outputs
  const void* dout;                     // backward input
  void *du, *ddt, *dA, *dD, *dB, *dC;   // backward outputs
  int64_t batch, channels, groups, length, dstate, chunk, nthreads;
};

int flemme_scan_abi_version() { return 2; }

}  // extern "C"

namespace {

constexpr int kMaxVecs = 32;  // N (padded) <= 256 floats
constexpr int kBlock = 2;     // forward: channels of one B/C group scanned together

// Pointers and constants of one (batch, channel) row and of its B/C group.
template <class S, int NVT> struct Row {
  typedef typename Vec<S>::V V;
  static constexpr int W = Vec<S>::W;
  const S *u, *dt, *Bm, *Cm;
  S Dk;
  V Av[NVT > 0 ? NVT : kMaxVecs];  // A
  V Al[NVT > 0 ? NVT : kMaxVecs];  // A * log2(e): exp(dt A) = 2^(dt Al)

  void init(const ScanArgs& a, int64_t bc, int nv) {
    const int64_t L = a.length, N = a.dstate, K = a.channels, b = bc / K, k = bc % K, g = k / (K / a.groups);
    u = static_cast<const S*>(a.u) + bc * L;
    dt = static_cast<const S*>(a.dt) + bc * L;
    Bm = static_cast<const S*>(a.B) + (b * a.groups + g) * L * N;
    Cm = static_cast<const S*>(a.C) + (b * a.groups + g) * L * N;
    Dk = a.D ? static_cast<const S*>(a.D)[k] : S(0);
    for (int v = 0; v < nv; ++v) {
      Av[v] = vload<S>(static_cast<const S*>(a.A) + k * N + v * W);
      Al[v] = Av[v] * S(kLog2e);
    }
  }
};

// Forward of CB consecutive rows of one (batch, group): they share B_t and C_t (loaded
// once per step), and their independent recurrences overlap each other's exp latency.
// NVT = N / W when fixed at compile time (loops fully unrolled), 0 = read at run time.
template <class S, int NVT, int CB> void forward_rows(const ScanArgs& a, int64_t bc0) {
  typedef typename Vec<S>::V V;
  constexpr int W = Vec<S>::W;
  const int NV = NVT > 0 ? NVT : int(a.dstate / W);
  const int64_t L = a.length, N = a.dstate, T = a.chunk, nck = (L + T - 1) / T;
  Row<S, NVT> r[CB];
  for (int c = 0; c < CB; ++c) r[c].init(a, bc0 + c, NV);
  const S *Bm = r[0].Bm, *Cm = r[0].Cm;
  V h[CB][NVT > 0 ? NVT : kMaxVecs];
  S* out[CB];
  S* ck[CB];
  for (int c = 0; c < CB; ++c) {
    out[c] = static_cast<S*>(a.out) + (bc0 + c) * L;
    ck[c] = static_cast<S*>(a.ckpt) + (bc0 + c) * nck * N;
    for (int v = 0; v < NV; ++v) h[c][v] = V{};
  }
  for (int64_t t = 0; t < L; ++t) {
    if (t % T == 0)
      for (int c = 0; c < CB; ++c)
        for (int v = 0; v < NV; ++v) vstore<S>(ck[c] + (t / T) * N + v * W, h[c][v]);
    const S *Bt = Bm + t * N, *Ct = Cm + t * N;
    for (int c = 0; c < CB; ++c) {
      const S d = r[c].dt[t], ut = r[c].u[t], du = d * ut;
      V acc = V{};
      for (int v = 0; v < NV; ++v) {
        h[c][v] = vexp2(r[c].Al[v] * d) * h[c][v] + du * vload<S>(Bt + v * W);
        acc += vload<S>(Ct + v * W) * h[c][v];
      }
      out[c][t] = hsum<S>(acc) + r[c].Dk * ut;
    }
  }
}

// Backward of one row (blocking rows measured slower here: the scratch outgrows L1).
// dB/dC of the row's group are accumulated into dBg/dCg (L, N), owned by the caller;
// sa: T * N decays and sh: (T + 1) * N states (row 0 = the chunk's initial state).
template <class S, int NVT> void backward_row(const ScanArgs& a, int64_t bc, S* sa, S* sh, S* dBg, S* dCg) {
  typedef typename Vec<S>::V V;
  constexpr int W = Vec<S>::W;
  const int NV = NVT > 0 ? NVT : int(a.dstate / W);
  const int64_t L = a.length, N = a.dstate, T = a.chunk, nck = (L + T - 1) / T;
  Row<S, NVT> r;
  r.init(a, bc, NV);
  const S* dout = static_cast<const S*>(a.dout) + bc * L;
  const S* ck = static_cast<const S*>(a.ckpt) + bc * nck * N;
  S* du = static_cast<S*>(a.du) + bc * L;
  S* ddt = static_cast<S*>(a.ddt) + bc * L;
  V dh_next[NVT > 0 ? NVT : kMaxVecs], dA_chunk[NVT > 0 ? NVT : kMaxVecs];
  double dA_acc[kMaxVecs * 8];
  double dD_acc = 0.0;
  for (int v = 0; v < NV; ++v) dh_next[v] = V{};
  for (int64_t n = 0; n < N; ++n) dA_acc[n] = 0.0;
  for (int64_t chk = nck - 1; chk >= 0; --chk) {
    const int64_t t0 = chk * T, len = std::min(T, L - t0);
    // 1) recompute this chunk's decays and states from its checkpoint.
    V h[NVT > 0 ? NVT : kMaxVecs];
    for (int v = 0; v < NV; ++v) {
      h[v] = vload<S>(ck + chk * N + v * W);
      vstore<S>(sh + v * W, h[v]);
    }
    for (int64_t i = 0; i < len; ++i) {
      const int64_t t = t0 + i;
      const S d = r.dt[t], dtu = d * r.u[t];
      const S* Bt = r.Bm + t * N;
      for (int v = 0; v < NV; ++v) {
        const V av = vexp2(r.Al[v] * d);
        h[v] = av * h[v] + dtu * vload<S>(Bt + v * W);
        vstore<S>(sa + i * N + v * W, av);
        vstore<S>(sh + (i + 1) * N + v * W, h[v]);
      }
    }
    // 2) reverse scan: dh_t = C_t dy_t + a_{t+1} dh_{t+1}, and every gradient of step t.
    for (int v = 0; v < NV; ++v) dA_chunk[v] = V{};
    for (int64_t i = len - 1; i >= 0; --i) {
      const int64_t t = t0 + i;
      const S dy = dout[t], d = r.dt[t], ut = r.u[t], dtu = d * ut;
      const S *Bt = r.Bm + t * N, *Ct = r.Cm + t * N;
      S* dBt = dBg + t * N;
      S* dCt = dCg + t * N;
      V s_ah = V{}, s_hb = V{};
      for (int v = 0; v < NV; ++v) {
        const V av = vload<S>(sa + i * N + v * W);
        const V hp = vload<S>(sh + i * N + v * W);  // h_{t-1}
        const V hc = vload<S>(sh + (i + 1) * N + v * W);
        const V Bv = vload<S>(Bt + v * W);
        const V dh = dh_next[v] + vload<S>(Ct + v * W) * dy;
        vstore<S>(dCt + v * W, vload<S>(dCt + v * W) + dy * hc);
        vstore<S>(dBt + v * W, vload<S>(dBt + v * W) + dh * dtu);
        const V dah = dh * av * hp;  // dL/d(dt A) of each state
        dA_chunk[v] += dah * d;
        dh_next[v] = av * dh;
        s_ah += dah * r.Av[v];
        s_hb += dh * Bv;
      }
      const S ah = hsum<S>(s_ah), hb = hsum<S>(s_hb);
      ddt[t] = ah + ut * hb;  // sum_n dh (a A h_{t-1} + B u)
      du[t] = d * hb + r.Dk * dy;
      dD_acc += double(dy) * double(ut);
    }
    for (int v = 0; v < NV; ++v)
      for (int j = 0; j < W; ++j) dA_acc[v * W + j] += double(dA_chunk[v][j]);
  }
  S* dA = static_cast<S*>(a.dA) + bc * N;
  for (int64_t n = 0; n < N; ++n) dA[n] = S(dA_acc[n]);
  static_cast<S*>(a.dD)[bc] = S(dD_acc);
}

// Threads: with OpenMP, the kernel runs in the OpenMP runtime already loaded by torch
// (its libgomp.so.1 is found by soname), so it shares torch's thread pool instead of
// competing with torch's spinning workers for the same cores. Without OpenMP, plain
// std::threads and a condition-variable barrier.
#if defined(_OPENMP)
struct Barrier {
  explicit Barrier(int) {}
  void wait() {
#pragma omp barrier
  }
};

template <class F> void run_threads(int n, F fn) {
  if (n <= 1) {
    fn(0, 1);
    return;
  }
#pragma omp parallel num_threads(n)
  fn(omp_get_thread_num(), omp_get_num_threads());
}
#else
struct Barrier {
  std::mutex m;
  std::condition_variable cv;
  int n, count = 0;
  int64_t generation = 0;
  explicit Barrier(int n_) : n(n_) {}
  void wait() {
    if (n <= 1) return;
    std::unique_lock<std::mutex> lock(m);
    const int64_t gen = generation;
    if (++count == n) {
      count = 0;
      ++generation;
      cv.notify_all();
    } else {
      cv.wait(lock, [&] { return generation != gen; });
    }
  }
};

template <class F> void run_threads(int n, F fn) {
  if (n <= 1) {
    fn(0, 1);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(n - 1);
  for (int i = 1; i < n; ++i) pool.emplace_back(fn, i, n);
  fn(0, n);
  for (auto& th : pool) th.join();
}
#endif

int threads_for(const ScanArgs& a, int64_t max_split) {
  const int64_t work = a.batch * a.channels * a.length * a.dstate;
  const int64_t n = std::min<int64_t>(a.nthreads, std::max<int64_t>(1, work / (1 << 16)));
  return int(std::max<int64_t>(1, std::min<int64_t>(n, max_split)));
}

template <class S, int NVT> void forward_impl(const ScanArgs& a) {
  const int64_t per_group = a.channels / a.groups, nseg = a.batch * a.groups;
  const int n = threads_for(a, a.batch * a.channels);
  run_threads(n, [&](int tid, int nt) {
    // Thread tid scans rows [lo, hi) of the flattened (batch, group, channel) order,
    // in blocks that never straddle two groups.
    const int64_t total = nseg * per_group, lo = total * tid / nt, hi = total * (tid + 1) / nt;
    for (int64_t seg = lo / per_group; seg * per_group < hi; ++seg) {
      const int64_t s0 = std::max(lo, seg * per_group), s1 = std::min(hi, (seg + 1) * per_group);
      int64_t bc = s0;
      for (; bc + kBlock <= s1; bc += kBlock) forward_rows<S, NVT, kBlock>(a, bc);
      for (; bc < s1; ++bc) forward_rows<S, NVT, 1>(a, bc);
    }
  });
}

template <class S, int NVT> void backward_impl(const ScanArgs& a) {
  const int64_t L = a.length, N = a.dstate, T = a.chunk, per_group = a.channels / a.groups;
  const int n = threads_for(a, per_group);
  S* dB = static_cast<S*>(a.dB);
  S* dC = static_cast<S*>(a.dC);
  // With several threads each one sums its channels' dB/dC into a private (L, N)
  // buffer; the buffers are then added in thread order, split over time steps.
  std::vector<S> priv(n > 1 ? size_t(n) * 2 * L * N : 0);
  Barrier barrier(n);
  run_threads(n, [&](int tid, int nt) {
    std::vector<S> sa(T * N), sh((T + 1) * N);
    const bool split = nt > 1;
    S* myB = split ? priv.data() + size_t(tid) * 2 * L * N : nullptr;
    S* myC = split ? myB + L * N : nullptr;
    for (int64_t b = 0; b < a.batch; ++b) {
      for (int64_t g = 0; g < a.groups; ++g) {
        S* outB = dB + (b * a.groups + g) * L * N;
        S* outC = dC + (b * a.groups + g) * L * N;
        if (split) std::fill(myB, myB + 2 * L * N, S(0));
        const int64_t first = b * a.channels + g * per_group;
        const int64_t lo = first + per_group * tid / nt, hi = first + per_group * (tid + 1) / nt;
        S* tB = split ? myB : outB;
        S* tC = split ? myC : outC;
        for (int64_t bc = lo; bc < hi; ++bc) backward_row<S, NVT>(a, bc, sa.data(), sh.data(), tB, tC);
        if (split) {
          barrier.wait();
          const int64_t r0 = L * tid / nt, r1 = L * (tid + 1) / nt;
          for (int th = 0; th < nt; ++th) {
            const S* srcB = priv.data() + size_t(th) * 2 * L * N;
            const S* srcC = srcB + L * N;
            for (int64_t i = r0 * N; i < r1 * N; ++i) {
              outB[i] += srcB[i];
              outC[i] += srcC[i];
            }
          }
          barrier.wait();
        }
      }
    }
  });
}

template <class S, int NVT> void run(const ScanArgs& a, bool backward) {
  if (backward) backward_impl<S, NVT>(a);
  else forward_impl<S, NVT>(a);
}

// Specialised (fully unrolled) code only where it matters: fp32 with N = 16 (Mamba's
// default) and N = 8; everything else runs the generic loops. Fewer instances keep the
// cold build short.
template <class S> int dispatch(const ScanArgs& a, bool backward) {
  constexpr int W = Vec<S>::W;
  if (a.dstate % W || a.dstate / W > kMaxVecs || a.chunk < 1 || a.groups < 1 || a.channels % a.groups)
    return 1;
  const int64_t nv = a.dstate / W;
  if constexpr (W == 8) {
    if (nv == 2) return run<S, 2>(a, backward), 0;
    if (nv == 1) return run<S, 1>(a, backward), 0;
  }
  run<S, 0>(a, backward);
  return 0;
}

}  // namespace

extern "C" {
int flemme_scan_fwd_f32(const ScanArgs* a) { return dispatch<float>(*a, false); }
int flemme_scan_fwd_f64(const ScanArgs* a) { return dispatch<double>(*a, false); }
int flemme_scan_bwd_f32(const ScanArgs* a) { return dispatch<float>(*a, true); }
int flemme_scan_bwd_f64(const ScanArgs* a) { return dispatch<double>(*a, true); }
}
