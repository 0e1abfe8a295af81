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

// exp over 8 floats: Cephes-style range reduction and polynomial (about 1 ulp), built
// from plain vector arithmetic so it needs no libmvec and no -ffast-math. The power of
// two is clamped in the integer domain: below -87.3 the scale is 0, so exp gives 0.
inline Vec<float>::V vexp(Vec<float>::V x) {
  typedef Vec<float>::V V;
  typedef Vec<float>::I I;
  const V magic = V{} + 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  V t = x * 1.44269504088896341f + magic;
  V k = t - magic;
  V r = x - k * 0.693359375f + k * 2.12194440e-4f;
  V p = V{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  I ki = (I)t - (I)magic;
  const I lo = I{} - 127, hi = I{} + 127;
  ki = ki < lo ? lo : ki;
  ki = ki > hi ? hi : ki;
  return p * (V)((ki + 127) << 23);
}

// fp64 is for gradient checks, not speed: the libm exp lane by lane.
inline Vec<double>::V vexp(Vec<double>::V x) {
  Vec<double>::V r;
  for (int i = 0; i < 4; ++i) r[i] = std::exp(x[i]);
  return r;
}

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
constexpr int kBlock = 4;     // channels of one B/C group scanned together

// A block of CB consecutive channels of one (batch, group): they share B_t and C_t, so
// these are loaded once per step, and their CB independent recurrences keep the
// floating-point units busy while each one waits on its own exp.
template <class S, int NVT, int CB> struct Block {
  typedef typename Vec<S>::V V;
  static constexpr int W = Vec<S>::W;
  const ScanArgs& a;
  const int NV;
  const int64_t L, N, T, nck, bc0;
  const S *Bm, *Cm;
  const S* u[CB];
  const S* dt[CB];
  S Dk[CB];
  V Av[CB][NVT > 0 ? NVT : kMaxVecs];

  Block(const ScanArgs& args, int64_t first)
      : a(args), NV(NVT > 0 ? NVT : int(args.dstate / W)), L(args.length), N(args.dstate), T(args.chunk),
        nck((args.length + args.chunk - 1) / args.chunk), bc0(first) {
    const int64_t K = a.channels, b = bc0 / K, k0 = bc0 % K, g = k0 / (K / a.groups);
    Bm = static_cast<const S*>(a.B) + (b * a.groups + g) * L * N;
    Cm = static_cast<const S*>(a.C) + (b * a.groups + g) * L * N;
    for (int c = 0; c < CB; ++c) {
      u[c] = static_cast<const S*>(a.u) + (bc0 + c) * L;
      dt[c] = static_cast<const S*>(a.dt) + (bc0 + c) * L;
      Dk[c] = a.D ? static_cast<const S*>(a.D)[k0 + c] : S(0);
      for (int v = 0; v < NV; ++v) Av[c][v] = vload<S>(static_cast<const S*>(a.A) + (k0 + c) * N + v * W);
    }
  }

  void forward() {
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
        const S d = dt[c][t], ut = u[c][t], du = d * ut;
        V acc = V{};
        for (int v = 0; v < NV; ++v) {
          h[c][v] = vexp(Av[c][v] * d) * h[c][v] + du * vload<S>(Bt + v * W);
          acc += vload<S>(Ct + v * W) * h[c][v];
        }
        out[c][t] = hsum<S>(acc) + Dk[c] * ut;
      }
    }
  }

  // dB/dC of this block's group are accumulated into dBg/dCg (L, N), owned by the caller.
  // sa: CB * T * N decays, sh: CB * (T + 1) * N states (row 0 = the chunk's initial state).
  void backward(S* sa, S* sh, S* dBg, S* dCg) {
    const S* dout[CB];
    const S* ck[CB];
    S* du[CB];
    S* ddt[CB];
    V dh_next[CB][NVT > 0 ? NVT : kMaxVecs];
    V dA_chunk[CB][NVT > 0 ? NVT : kMaxVecs];
    double dA_acc[CB][kMaxVecs * 8];
    double dD_acc[CB];
    for (int c = 0; c < CB; ++c) {
      const int64_t bc = bc0 + c;
      dout[c] = static_cast<const S*>(a.dout) + bc * L;
      ck[c] = static_cast<const S*>(a.ckpt) + bc * nck * N;
      du[c] = static_cast<S*>(a.du) + bc * L;
      ddt[c] = static_cast<S*>(a.ddt) + bc * L;
      for (int v = 0; v < NV; ++v) dh_next[c][v] = V{};
      for (int64_t n = 0; n < N; ++n) dA_acc[c][n] = 0.0;
      dD_acc[c] = 0.0;
    }
    const int64_t TN = T * N, T1N = (T + 1) * N;
    for (int64_t chk = nck - 1; chk >= 0; --chk) {
      const int64_t t0 = chk * T, len = std::min(T, L - t0);
      // 1) recompute this chunk's decays and states from its checkpoint.
      V h[CB][NVT > 0 ? NVT : kMaxVecs];
      for (int c = 0; c < CB; ++c)
        for (int v = 0; v < NV; ++v) {
          h[c][v] = vload<S>(ck[c] + chk * N + v * W);
          vstore<S>(sh + c * T1N + v * W, h[c][v]);
        }
      for (int64_t i = 0; i < len; ++i) {
        const int64_t t = t0 + i;
        const S* Bt = Bm + t * N;
        for (int c = 0; c < CB; ++c) {
          const S d = dt[c][t], du_ = d * u[c][t];
          for (int v = 0; v < NV; ++v) {
            const V av = vexp(Av[c][v] * d);
            h[c][v] = av * h[c][v] + du_ * vload<S>(Bt + v * W);
            vstore<S>(sa + c * TN + i * N + v * W, av);
            vstore<S>(sh + c * T1N + (i + 1) * N + v * W, h[c][v]);
          }
        }
      }
      // 2) reverse scan: dh_t = C_t dy_t + a_{t+1} dh_{t+1}.
      for (int c = 0; c < CB; ++c)
        for (int v = 0; v < NV; ++v) dA_chunk[c][v] = V{};
      for (int64_t i = len - 1; i >= 0; --i) {
        const int64_t t = t0 + i;
        const S *Bt = Bm + t * N, *Ct = Cm + t * N;
        S* dBt = dBg + t * N;
        S* dCt = dCg + t * N;
        for (int v = 0; v < NV; ++v) {
          const V Bv = vload<S>(Bt + v * W), Cv = vload<S>(Ct + v * W);
          V dBv = vload<S>(dBt + v * W), dCv = vload<S>(dCt + v * W);
          for (int c = 0; c < CB; ++c) {
            const S dy = dout[c][t], d = dt[c][t];
            const V av = vload<S>(sa + c * TN + i * N + v * W);
            const V hp = vload<S>(sh + c * T1N + i * N + v * W);  // h_{t-1}
            const V hc = vload<S>(sh + c * T1N + (i + 1) * N + v * W);
            const V dh = dh_next[c][v] + Cv * dy;
            dCv += dy * hc;
            dBv += dh * (d * u[c][t]);
            const V dah = dh * av * hp;  // dL/d(dt A) for this state
            dA_chunk[c][v] += dah * d;
            dh_next[c][v] = av * dh;
            // per-(channel, step) sums over the state, finished below
            vstore<S>(sa + c * TN + i * N + v * W, dah * Av[c][v] + dh * Bv * u[c][t]);
            vstore<S>(sh + c * T1N + (i + 1) * N + v * W, dh * Bv);
          }
          vstore<S>(dBt + v * W, dBv);
          vstore<S>(dCt + v * W, dCv);
        }
      }
      // 3) per-step reductions over the state: ddt_t and du_t.
      for (int c = 0; c < CB; ++c) {
        for (int64_t i = 0; i < len; ++i) {
          const int64_t t = t0 + i;
          V sdt = V{}, sdu = V{};
          for (int v = 0; v < NV; ++v) {
            sdt += vload<S>(sa + c * TN + i * N + v * W);
            sdu += vload<S>(sh + c * T1N + (i + 1) * N + v * W);
          }
          const S dy = dout[c][t];
          ddt[c][t] = hsum<S>(sdt);
          du[c][t] = dt[c][t] * hsum<S>(sdu) + Dk[c] * dy;
          dD_acc[c] += double(dy) * double(u[c][t]);
        }
        for (int v = 0; v < NV; ++v)
          for (int j = 0; j < W; ++j) dA_acc[c][v * W + j] += double(dA_chunk[c][v][j]);
      }
    }
    for (int c = 0; c < CB; ++c) {
      S* dA = static_cast<S*>(a.dA) + (bc0 + c) * N;
      for (int64_t n = 0; n < N; ++n) dA[n] = S(dA_acc[c][n]);
      static_cast<S*>(a.dD)[bc0 + c] = S(dD_acc[c]);
    }
  }
};

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
    fn(0);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(n - 1);
  for (int i = 1; i < n; ++i) pool.emplace_back(fn, i);
  fn(0);
  for (auto& th : pool) th.join();
}

int threads_for(const ScanArgs& a, int64_t max_split) {
  const int64_t work = a.batch * a.channels * a.length * a.dstate;
  const int64_t n = std::min<int64_t>(a.nthreads, std::max<int64_t>(1, work / (1 << 16)));
  return int(std::max<int64_t>(1, std::min<int64_t>(n, max_split)));
}

// Channels [lo, hi) of one group in blocks of kBlock, then one by one.
template <class F> void for_blocks(int64_t lo, int64_t hi, F fn) {
  int64_t k = lo;
  for (; k + kBlock <= hi; k += kBlock) fn(k, kBlock);
  for (; k < hi; ++k) fn(k, 1);
}

template <class S, int NVT> void forward_impl(const ScanArgs& a) {
  const int64_t per_group = a.channels / a.groups, nseg = a.batch * a.groups;
  const int n = threads_for(a, a.batch * a.channels);
  run_threads(n, [&](int tid) {
    // Thread tid scans the channels [lo, hi) of the flattened (batch, group, channel) order.
    const int64_t total = nseg * per_group, lo = total * tid / n, hi = total * (tid + 1) / n;
    for (int64_t seg = lo / per_group; seg * per_group < hi; ++seg) {
      const int64_t s0 = std::max(lo, seg * per_group), s1 = std::min(hi, (seg + 1) * per_group);
      for_blocks(s0, s1, [&](int64_t bc, int cb) {
        if (cb == kBlock) Block<S, NVT, kBlock>(a, bc).forward();
        else Block<S, NVT, 1>(a, bc).forward();
      });
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
  run_threads(n, [&](int tid) {
    std::vector<S> sa(kBlock * T * N), sh(kBlock * (T + 1) * N);
    S* myB = n > 1 ? priv.data() + size_t(tid) * 2 * L * N : nullptr;
    S* myC = n > 1 ? myB + L * N : nullptr;
    for (int64_t b = 0; b < a.batch; ++b) {
      for (int64_t g = 0; g < a.groups; ++g) {
        S* outB = dB + (b * a.groups + g) * L * N;
        S* outC = dC + (b * a.groups + g) * L * N;
        if (n > 1) std::fill(myB, myB + 2 * L * N, S(0));
        const int64_t first = b * a.channels + g * per_group;
        const int64_t lo = first + per_group * tid / n, hi = first + per_group * (tid + 1) / n;
        S* tB = n > 1 ? myB : outB;
        S* tC = n > 1 ? myC : outC;
        for_blocks(lo, hi, [&](int64_t bc, int cb) {
          if (cb == kBlock) Block<S, NVT, kBlock>(a, bc).backward(sa.data(), sh.data(), tB, tC);
          else Block<S, NVT, 1>(a, bc).backward(sa.data(), sh.data(), tB, tC);
        });
        if (n > 1) {
          barrier.wait();
          const int64_t r0 = L * tid / n, r1 = L * (tid + 1) / n;
          for (int th = 0; th < n; ++th) {
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
