// ONNX Runtime custom op `flemme.mamba::SelectiveScan`: the forward of selective_scan.cpp
// (included below, not copied) behind ONNX Runtime's C custom-op ABI, so that an exported
// mamba model runs the scan as one fused kernel call instead of an ONNX `Scan` whose step
// graph ONNX Runtime interprets once per time step.
//
//   y = SelectiveScan(u, dt, A, B, C, D)     (float32)
//   u, dt, y : (batch, channels, L)   dt final (bias and softplus applied before the op)
//   A : (channels, N)   B, C : (batch, groups, N, L)   D : (channels)
//   h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t;  y_t = C_t . h_t + D u_t
//
// The silu(z) gate and softplus(delta + bias) stay ordinary ONNX ops around it, as in the
// eager path around the ctypes kernel. Work is split into (batch, group, block of channels)
// tasks run through ONNX Runtime's intra-op thread pool (KernelContext_ParallelFor), so the
// session's thread setting governs the op like every other node.
//
// No ONNX Runtime header is needed: the library only uses the handful of C API entries
// declared below, at their fixed positions in ONNX Runtime's append-only `OrtApi` function
// table (positions as published in onnxruntime_c_api.h, MIT licence, (c) Microsoft; the
// table is versioned and never reordered), and the `OrtCustomOp` layout of API version 16.
// Nothing links against libonnxruntime: ONNX Runtime passes its API table to
// RegisterCustomOps when a session registers this library.
#include "selective_scan.cpp"

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace ortabi {

struct OrtStatus;
struct OrtApi;
struct OrtSessionOptions;
struct OrtCustomOpDomain;
struct OrtKernelInfo;
struct OrtKernelContext;
struct OrtValue;
struct OrtTensorTypeAndShapeInfo;

struct OrtApiBase {
  const OrtApi* (*GetApi)(uint32_t version);
  const char* (*GetVersionString)();
};

constexpr uint32_t kApiVersion = 18;  // KernelContext_ParallelFor: ONNX Runtime >= 1.18
constexpr int kOrtFail = 1, kOrtInvalidArgument = 2;  // OrtErrorCode
constexpr int kFloat = 1;                             // ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT

// Positions in the OrtApi table (function pointers, in order of their API versions).
enum Slot : size_t {
  CreateStatus = 0,
  CreateCustomOpDomain = 26,
  CustomOpDomain_Add = 27,
  AddCustomOpDomain = 28,
  GetTensorMutableData = 51,
  GetTensorElementType = 60,
  GetDimensionsCount = 61,
  GetDimensions = 62,
  GetTensorTypeAndShape = 65,
  KernelContext_GetInputCount = 88,
  KernelContext_GetInput = 90,
  KernelContext_GetOutput = 91,
  ReleaseTensorTypeAndShapeInfo = 99,
  KernelContext_ParallelFor = 274,
};

template <class F> F fn(const OrtApi* api, Slot slot) {
  return reinterpret_cast<F>(reinterpret_cast<void* const*>(api)[slot]);
}

struct OrtCustomOp {  // API version 16 layout (fields after KernelComputeV2 are read only from 17 on)
  uint32_t version;
  void* (*CreateKernel)(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo*);
  const char* (*GetName)(const OrtCustomOp*);
  const char* (*GetExecutionProviderType)(const OrtCustomOp*);
  int (*GetInputType)(const OrtCustomOp*, size_t);
  size_t (*GetInputTypeCount)(const OrtCustomOp*);
  int (*GetOutputType)(const OrtCustomOp*, size_t);
  size_t (*GetOutputTypeCount)(const OrtCustomOp*);
  void (*KernelCompute)(void*, OrtKernelContext*);
  void (*KernelDestroy)(void*);
  int (*GetInputCharacteristic)(const OrtCustomOp*, size_t);
  int (*GetOutputCharacteristic)(const OrtCustomOp*, size_t);
  int (*GetInputMemoryType)(const OrtCustomOp*, size_t);
  int (*GetVariadicInputMinArity)(const OrtCustomOp*);
  int (*GetVariadicInputHomogeneity)(const OrtCustomOp*);
  int (*GetVariadicOutputMinArity)(const OrtCustomOp*);
  int (*GetVariadicOutputHomogeneity)(const OrtCustomOp*);
  OrtStatus* (*CreateKernelV2)(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo*, void**);
  OrtStatus* (*KernelComputeV2)(void*, OrtKernelContext*);
  void* InferOutputShapeFn;
  void* GetStartVersion;
  void* GetEndVersion;
};

}  // namespace ortabi

namespace {

using namespace ortabi;

constexpr size_t kInputs = 6;
constexpr int64_t kChannelBlock = 16;  // channels per task (a multiple of the kernel's kBlock)

struct Kernel {
  const OrtApi* api;
};

OrtStatus* status(const OrtApi* api, int code, const std::string& msg) {
  return fn<OrtStatus* (*)(int, const char*)>(api, CreateStatus)(code, msg.c_str());
}

#define ORT_CHECK(expr)             \
  do {                              \
    OrtStatus* st_ = (expr);        \
    if (st_) return st_;            \
  } while (0)

OrtStatus* shape_of(const OrtApi* api, const OrtValue* v, std::vector<int64_t>& dims, int& type) {
  OrtTensorTypeAndShapeInfo* info = nullptr;
  ORT_CHECK(fn<OrtStatus* (*)(const OrtValue*, OrtTensorTypeAndShapeInfo**)>(api, GetTensorTypeAndShape)(v, &info));
  size_t n = 0;
  OrtStatus* st = fn<OrtStatus* (*)(const OrtTensorTypeAndShapeInfo*, size_t*)>(api, GetDimensionsCount)(info, &n);
  if (!st) {
    dims.assign(n, 0);
    st = fn<OrtStatus* (*)(const OrtTensorTypeAndShapeInfo*, int64_t*, size_t)>(api, GetDimensions)(info, dims.data(), n);
  }
  if (!st) st = fn<OrtStatus* (*)(const OrtTensorTypeAndShapeInfo*, int*)>(api, GetTensorElementType)(info, &type);
  fn<void (*)(OrtTensorTypeAndShapeInfo*)>(api, ReleaseTensorTypeAndShapeInfo)(info);
  return st;
}

struct Job {  // the (batch, group, channel block) tasks of one call
  ScanArgs base;
  int64_t per, blocks, n_pad;
};

void run_task(void* data, size_t index) {
  const Job& job = *static_cast<const Job*>(data);
  const ScanArgs& a = job.base;
  const int64_t i = int64_t(index), blk = i % job.blocks, bg = i / job.blocks;
  const int64_t b = bg / a.groups, g = bg % a.groups;
  const int64_t c0 = g * job.per + blk * kChannelBlock, count = std::min(kChannelBlock, job.per - blk * kChannelBlock);
  const int64_t L = a.length, N = job.n_pad, row = b * a.channels + c0;
  ScanArgs s = a;  // one batch element, one group, `count` of its channels, this thread only
  s.u = static_cast<const float*>(a.u) + row * L;
  s.dt = static_cast<const float*>(a.dt) + row * L;
  s.A = static_cast<const float*>(a.A) + c0 * N;
  s.B = static_cast<const float*>(a.B) + bg * L * N;
  s.C = static_cast<const float*>(a.C) + bg * L * N;
  s.D = static_cast<const float*>(a.D) + c0;
  s.out = static_cast<float*>(a.out) + row * L;
  s.ckpt = static_cast<float*>(a.ckpt) + row * N;  // chunk = L: one checkpoint (unused) per row
  s.batch = 1, s.channels = count, s.groups = 1, s.nthreads = 1;
  flemme_scan_fwd_f32(&s);
}

// (b, G, N, L) -> (b, G, L, N_pad), zero in the padding: the kernel's time-major layout.
void to_time_major(const float* src, float* dst, int64_t bg, int64_t n, int64_t L, int64_t n_pad) {
  std::fill(dst, dst + bg * L * n_pad, 0.0f);
  for (int64_t s = 0; s < bg; ++s)
    for (int64_t k = 0; k < n; ++k) {
      const float* from = src + (s * n + k) * L;
      float* to = dst + s * L * n_pad + k;
      for (int64_t t = 0; t < L; ++t) to[t * n_pad] = from[t];
    }
}

OrtStatus* compute(void* kernel, OrtKernelContext* ctx) {
  const OrtApi* api = static_cast<Kernel*>(kernel)->api;
  const OrtValue* in[kInputs];
  std::vector<int64_t> dims[kInputs];
  for (size_t i = 0; i < kInputs; ++i) {
    ORT_CHECK(fn<OrtStatus* (*)(const OrtKernelContext*, size_t, const OrtValue**)>(api, KernelContext_GetInput)(
        ctx, i, &in[i]));
    int type = 0;
    ORT_CHECK(shape_of(api, in[i], dims[i], type));
    if (type != kFloat) return status(api, kOrtInvalidArgument, "flemme.mamba SelectiveScan takes float32 inputs");
  }
  const std::vector<int64_t>&u = dims[0], &A = dims[2], &B = dims[3];
  if (u.size() != 3 || dims[1] != u || A.size() != 2 || B.size() != 4 || dims[4] != B || dims[5].size() != 1)
    return status(api, kOrtInvalidArgument,
                  "flemme.mamba SelectiveScan: expected u, dt (b, K, L), A (K, N), B, C (b, G, N, L), D (K)");
  const int64_t batch = u[0], channels = u[1], L = u[2], groups = B[1], n = A[1];
  const int64_t n_pad = (n + 7) / 8 * 8;
  if (A[0] != channels || dims[5][0] != channels || B[0] != batch || B[2] != n || B[3] != L || groups < 1 ||
      channels % groups)
    return status(api, kOrtInvalidArgument, "flemme.mamba SelectiveScan: inconsistent input shapes");
  if (n_pad > kMaxVecs * 8)
    return status(api, kOrtInvalidArgument, "flemme.mamba SelectiveScan takes at most 256 states (N); re-export "
                                             "with --portable");
  OrtValue* out = nullptr;
  ORT_CHECK(fn<OrtStatus* (*)(OrtKernelContext*, size_t, const int64_t*, size_t, OrtValue**)>(
      api, KernelContext_GetOutput)(ctx, 0, u.data(), 3, &out));
  if (batch * channels * L == 0) return nullptr;
  void* data[kInputs + 1];
  for (size_t i = 0; i < kInputs; ++i)
    ORT_CHECK(fn<OrtStatus* (*)(OrtValue*, void**)>(api, GetTensorMutableData)(const_cast<OrtValue*>(in[i]),
                                                                                 &data[i]));
  ORT_CHECK(fn<OrtStatus* (*)(OrtValue*, void**)>(api, GetTensorMutableData)(out, &data[kInputs]));

  std::vector<float> Ap(channels * n_pad, 0.0f), Bt(batch * groups * L * n_pad), Ct(Bt.size());
  std::vector<float> ckpt(batch * channels * n_pad);
  for (int64_t k = 0; k < channels; ++k)
    std::copy_n(static_cast<const float*>(data[2]) + k * n, n, Ap.data() + k * n_pad);
  to_time_major(static_cast<const float*>(data[3]), Bt.data(), batch * groups, n, L, n_pad);
  to_time_major(static_cast<const float*>(data[4]), Ct.data(), batch * groups, n, L, n_pad);

  Job job{};
  job.base.u = data[0], job.base.dt = data[1], job.base.A = Ap.data(), job.base.B = Bt.data();
  job.base.C = Ct.data(), job.base.D = data[5], job.base.out = data[kInputs], job.base.ckpt = ckpt.data();
  job.base.batch = batch, job.base.channels = channels, job.base.groups = groups, job.base.length = L;
  job.base.dstate = n_pad, job.base.chunk = L, job.base.nthreads = 1;
  job.per = channels / groups, job.blocks = (job.per + kChannelBlock - 1) / kChannelBlock, job.n_pad = n_pad;
  const size_t tasks = size_t(batch * groups * job.blocks);
  return fn<OrtStatus* (*)(const OrtKernelContext*, void (*)(void*, size_t), size_t, size_t, void*)>(
      api, KernelContext_ParallelFor)(ctx, run_task, tasks, tasks, &job);
}

OrtStatus* create_kernel(const OrtCustomOp*, const OrtApi* api, const OrtKernelInfo*, void** kernel) {
  *kernel = new Kernel{api};
  return nullptr;
}

void destroy_kernel(void* kernel) { delete static_cast<Kernel*>(kernel); }

OrtCustomOp make_op() {
  OrtCustomOp op{};
  op.version = 16;
  op.CreateKernel = [](const OrtCustomOp*, const OrtApi* api, const OrtKernelInfo*) -> void* {
    return new Kernel{api};
  };
  op.GetName = [](const OrtCustomOp*) { return "SelectiveScan"; };
  op.GetExecutionProviderType = [](const OrtCustomOp*) -> const char* { return "CPUExecutionProvider"; };
  op.GetInputType = [](const OrtCustomOp*, size_t) { return kFloat; };
  op.GetInputTypeCount = [](const OrtCustomOp*) { return kInputs; };
  op.GetOutputType = [](const OrtCustomOp*, size_t) { return kFloat; };
  op.GetOutputTypeCount = [](const OrtCustomOp*) { return size_t(1); };
  op.KernelCompute = [](void*, OrtKernelContext*) {};  // unused: ONNX Runtime calls KernelComputeV2
  op.KernelDestroy = destroy_kernel;
  op.GetInputCharacteristic = [](const OrtCustomOp*, size_t) { return 0; };   // required
  op.GetOutputCharacteristic = [](const OrtCustomOp*, size_t) { return 0; };  // required
  op.GetInputMemoryType = [](const OrtCustomOp*, size_t) { return 0; };       // OrtMemTypeDefault
  op.GetVariadicInputMinArity = [](const OrtCustomOp*) { return 1; };
  op.GetVariadicInputHomogeneity = [](const OrtCustomOp*) { return 1; };
  op.GetVariadicOutputMinArity = [](const OrtCustomOp*) { return 1; };
  op.GetVariadicOutputHomogeneity = [](const OrtCustomOp*) { return 1; };
  op.CreateKernelV2 = create_kernel;
  op.KernelComputeV2 = compute;
  return op;
}

const OrtCustomOp kSelectiveScan = make_op();

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* RegisterCustomOps(OrtSessionOptions* options,
                                                                               const OrtApiBase* base) {
  const OrtApi* api = base->GetApi(kApiVersion);
  if (!api) {
    const OrtApi* v1 = base->GetApi(1);
    return v1 ? status(v1, kOrtFail, std::string("flemme.mamba custom ops need onnxruntime >= 1.18, found ") +
                                         base->GetVersionString())
              : nullptr;
  }
  OrtCustomOpDomain* domain = nullptr;  // kept for the process: sessions created later still use it
  ORT_CHECK(fn<OrtStatus* (*)(const char*, OrtCustomOpDomain**)>(api, CreateCustomOpDomain)("flemme.mamba", &domain));
  ORT_CHECK(fn<OrtStatus* (*)(OrtCustomOpDomain*, const OrtCustomOp*)>(api, CustomOpDomain_Add)(domain,
                                                                                               &kSelectiveScan));
  return fn<OrtStatus* (*)(OrtSessionOptions*, OrtCustomOpDomain*)>(api, AddCustomOpDomain)(options, domain);
}
