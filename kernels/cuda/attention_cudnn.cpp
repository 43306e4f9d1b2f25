// Attention through cuDNN's fused SDPA (frontend graph API, cudnn_frontend::graph): the fast
// path for bf16 training, tried by attention.cu before its own kernels.
//
// Layout: our [B, T, H, D] tensors with strides (sb, st, sh, 1) are cuDNN's logical
// [B, H, S, D] with strides (sb, sh, st, 1), so q/k/v may stay views of a fused projection.
// GQA: K and V simply have Hkv heads; dK/dV come back with Hkv heads (cuDNN sums the group).
//
// Masks (cudnn_frontend utils/attn_score_modifiers.h, sliding_window_mask): right bound 0
// keeps key j for query row i when j <= i + (Tk - Tq if BOTTOM_RIGHT else 0); left bound W
// keeps j > i + (that shift) - W. Ours keeps q_offset + i - window < j <= q_offset + i, so
// q_offset = 0 is TOP_LEFT, q_offset = Tk - Tq is BOTTOM_RIGHT, and window = W is left bound
// W. Any other q_offset takes the fallback kernel.
//
// Stats: cuDNN's Stats output is f32 [B, H, Tq, 1], max + ln(sum exp(s - max)) over the
// softmax input s, which is attn_scale * q.k after masking — the natural-log log-sum-exp of
// the scaled scores (set_stats_use_log2 would make it base 2; we leave it off). That is
// exactly our lse [B, Hq, Tq] (contiguous, i.e. packed BHS1), so no conversion is needed, and
// forward and backward may each take either path.
//
// Graph building takes milliseconds to seconds, so built graphs are cached per shape key
// (device, direction, sizes, every stride, mask alignment, window, scale); a shape cuDNN
// refuses is cached as refused. ANVIL_CUDNN_ATTENTION=0 in the environment turns this path
// off (to compare against the fallback kernel). The backward asks for cuDNN's deterministic
// algorithm first and takes the default one only where that is not available.
#define CUDNN_FRONTEND_SKIP_JSON_LIB 1  // serialisation is not used; keeps a second nlohmann out
#include <cudnn.h>
#include <cudnn_frontend.h>

#include <atomic>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "core/cuda/runtime.h"
#include "kernels/cuda/attention_internal.h"

namespace anvil::kernels::cuda::detail {
namespace {

namespace fe = cudnn_frontend;

std::atomic<int64_t> forward_runs{0}, backward_runs{0};  // cudnn_attention_runs()

// Tensor uids in the variant pack.
enum Uid : int64_t { kQ = 1, kK, kV, kO, kStats, kdO, kdQ, kdK, kdV };

bool enabled() {
  static const bool on = [] {
    const char* env = std::getenv("ANVIL_CUDNN_ATTENTION");
    return env == nullptr || std::strcmp(env, "0") != 0;
  }();
  return on;
}

std::vector<int64_t> bhsd_dims(const Tensor& t) { return {t.size(0), t.size(2), t.size(1), t.size(3)}; }
std::vector<int64_t> bhsd_strides(const Tensor& t) { return {t.stride(0), t.stride(2), t.stride(1), 1}; }

bool aligned16(const Tensor& t) { return reinterpret_cast<uintptr_t>(t.raw_data()) % 16 == 0; }

// What the fused kernels need before a graph is worth building: bf16, a head dim that is a
// multiple of 8, a mask cuDNN can express, 16-byte aligned rows and pointers. The frontend
// checks every variant-pack pointer against its tensor's 16-byte alignment at execute time,
// Stats (our lse) included, and would fail the call rather than let us fall back.
bool takes(const AttentionDims& d, const Tensor& lse, std::initializer_list<const Tensor*> tensors) {
  if (!enabled()) return false;
  if ((*tensors.begin())->dtype() != DType::BF16) return false;
  if (d.D % 8 != 0 || d.D > 256 || d.window > INT_MAX) return false;
  if (d.q_offset != 0 && d.q_offset != d.Tk - d.Tq) return false;
  // A decode step (one query after a KV cache) has a new Tk on every call, so each would build a
  // graph (milliseconds to seconds) and cache it for good; the fallback kernel takes those.
  if (d.Tq == 1 && d.q_offset > 0) return false;
  if (!aligned16(lse)) return false;  // a contiguous lse may still be a view at an odd offset
  for (const Tensor* t : tensors) {
    if (!aligned16(*t)) return false;
    for (int dim = 0; dim < 3; ++dim)
      if (t->size(dim) > 1 && t->stride(dim) % 8 != 0) return false;
  }
  return true;
}

struct CachedGraph {
  std::shared_ptr<fe::graph::Graph> graph;  // null: cuDNN refused the shape
  int64_t workspace = 0;
};

class SdpaCache {
 public:
  cudnnHandle_t handle(int device) {
    cudnnHandle_t& h = handles_[device];
    if (h == nullptr) {
      anvil::cuda::DeviceGuard guard(device);
      check(cudnnCreate(&h), "cudnnCreate");
    }
    return h;
  }

  std::mutex& mutex() { return mutex_; }

  // The graph for `key`, built by `build` on first use (null if cuDNN refuses it).
  template <class Build>
  const CachedGraph& get(const std::vector<int64_t>& key, Build&& build) {
    auto it = graphs_.find(key);
    if (it != graphs_.end()) return it->second;
    return graphs_.emplace(key, build()).first->second;
  }

  static void check(cudnnStatus_t st, const char* what) {
    ANVIL_CHECK(st == CUDNN_STATUS_SUCCESS, "cuDNN error ", cudnnGetErrorString(st), " from ", what);
  }

 private:
  std::mutex mutex_;
  std::unordered_map<int, cudnnHandle_t> handles_;
  std::map<std::vector<int64_t>, CachedGraph> graphs_;
};

// Never destroyed: cuDNN objects must not be freed after the CUDA runtime shut down at exit.
SdpaCache& cache() {
  static SdpaCache* c = new SdpaCache();
  return *c;
}

std::shared_ptr<fe::graph::Graph> new_graph() {
  auto g = std::make_shared<fe::graph::Graph>();
  g->set_io_data_type(fe::DataType_t::BFLOAT16)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  return g;
}

std::shared_ptr<fe::graph::Tensor_attributes> input(fe::graph::Graph& g, const char* name, Uid uid,
                                                    const Tensor& t) {
  return g.tensor(fe::graph::Tensor_attributes()
                      .set_name(name)
                      .set_uid(uid)
                      .set_dim(bhsd_dims(t))
                      .set_stride(bhsd_strides(t))
                      .set_data_type(fe::DataType_t::BFLOAT16));
}

void set_output(const std::shared_ptr<fe::graph::Tensor_attributes>& a, Uid uid, const Tensor& t) {
  a->set_output(true).set_uid(uid).set_dim(bhsd_dims(t)).set_stride(bhsd_strides(t)).set_data_type(
      fe::DataType_t::BFLOAT16);
}

std::vector<int64_t> stats_dims(const AttentionDims& d) { return {d.B, d.Hq, d.Tq, 1}; }
std::vector<int64_t> stats_strides(const AttentionDims& d) { return {d.Hq * d.Tq, d.Tq, 1, 1}; }

fe::DiagonalAlignment_t alignment_of(const AttentionDims& d) {
  return d.q_offset == 0 ? fe::DiagonalAlignment_t::TOP_LEFT : fe::DiagonalAlignment_t::BOTTOM_RIGHT;
}

// Validates, lowers and builds plans; the workspace size of a built graph, or -1 if refused.
int64_t build(fe::graph::Graph& g, cudnnHandle_t h) {
  if (!g.build(h, {fe::HeurMode_t::A, fe::HeurMode_t::FALLBACK}).is_good()) return -1;
  int64_t ws = 0;
  if (!g.get_workspace_size(ws).is_good()) return -1;
  return ws;
}

std::vector<int64_t> key_of(const AttentionDims& d, int64_t direction, std::initializer_list<const Tensor*> tensors) {
  uint32_t scale_bits = 0;
  std::memcpy(&scale_bits, &d.scale, sizeof scale_bits);
  std::vector<int64_t> key{d.device, direction, d.B, d.Tq, d.Tk, d.Hq, d.Hkv, d.D,
                           d.q_offset == 0, d.window, static_cast<int64_t>(scale_bits)};
  for (const Tensor* t : tensors)
    for (int dim = 0; dim < 3; ++dim) key.push_back(t->stride(dim));
  return key;
}

CachedGraph build_forward(const AttentionDims& d, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                          cudnnHandle_t h) {
  try {
    auto g = new_graph();
    auto Q = input(*g, "Q", kQ, q), K = input(*g, "K", kK, k), V = input(*g, "V", kV, v);
    auto attrs = fe::graph::SDPA_attributes()
                     .set_name("sdpa")
                     .set_generate_stats(true)
                     .set_attn_scale(d.scale)
                     .set_diagonal_alignment(alignment_of(d))
                     .set_diagonal_band_right_bound(0);
    if (d.window > 0) attrs.set_diagonal_band_left_bound(static_cast<int>(d.window));
    auto [O, Stats] = g->sdpa(Q, K, V, std::move(attrs));
    set_output(O, kO, out);
    Stats->set_output(true)
        .set_uid(kStats)
        .set_dim(stats_dims(d))
        .set_stride(stats_strides(d))
        .set_data_type(fe::DataType_t::FLOAT);
    const int64_t ws = build(*g, h);
    if (ws < 0) return {};
    return {g, ws};
  } catch (const std::exception&) {  // the frontend throws when no implementation fits
    return {};
  }
}

CachedGraph build_backward(const AttentionDims& d, const Tensor& dout, const Tensor& q, const Tensor& k,
                           const Tensor& v, const Tensor& out, const Tensor& dq, const Tensor& dk, const Tensor& dv,
                           cudnnHandle_t h, bool deterministic) {
  try {
    auto g = new_graph();
    auto Q = input(*g, "Q", kQ, q), K = input(*g, "K", kK, k), V = input(*g, "V", kV, v);
    auto O = input(*g, "O", kO, out), dO = input(*g, "dO", kdO, dout);
    auto Stats = g->tensor(fe::graph::Tensor_attributes()
                               .set_name("Stats")
                               .set_uid(kStats)
                               .set_dim(stats_dims(d))
                               .set_stride(stats_strides(d))
                               .set_data_type(fe::DataType_t::FLOAT));
    auto attrs = fe::graph::SDPA_backward_attributes()
                     .set_name("sdpa_backward")
                     .set_attn_scale(d.scale)
                     .set_diagonal_alignment(alignment_of(d))
                     .set_diagonal_band_right_bound(0)
                     .set_deterministic_algorithm(deterministic);
    if (d.window > 0) attrs.set_diagonal_band_left_bound(static_cast<int>(d.window));
    auto [dQ, dK, dV] = g->sdpa_backward(Q, K, V, O, dO, Stats, std::move(attrs));
    set_output(dQ, kdQ, dq);
    set_output(dK, kdK, dk);
    set_output(dV, kdV, dv);
    const int64_t ws = build(*g, h);
    if (ws < 0) return {};
    return {g, ws};
  } catch (const std::exception&) {
    return {};
  }
}

// Enqueues a built graph on `stream` with a workspace from the caching allocator (freed at
// once: the allocator hands it out again only to later work on the same stream).
void execute(const CachedGraph& cg, cudnnHandle_t h, std::unordered_map<int64_t, void*>& ptrs, int device,
             cudaStream_t stream, const char* op) {
  Tensor ws = Tensor::empty({std::max<int64_t>(cg.workspace, 1)}, DType::U8, Device::cuda(device));
  SdpaCache::check(cudnnSetStream(h, stream), "cudnnSetStream");
  auto st = cg.graph->execute(h, ptrs, ws.raw_data());
  ANVIL_CHECK(st.is_good(), op, ": cuDNN SDPA failed to run a graph it built: ", st.get_message(),
              " — set ANVIL_CUDNN_ATTENTION=0 to use the fallback kernel, and report the shape");
}

}  // namespace

bool cudnn_attention_forward(const AttentionDims& d, const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                             Tensor& lse, cudaStream_t stream) {
  if (!takes(d, lse, {&q, &k, &v, &out})) return false;
  SdpaCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex());
  cudnnHandle_t h = c.handle(d.device);
  const CachedGraph& cg = c.get(key_of(d, 0, {&q, &k, &v, &out}), [&] { return build_forward(d, q, k, v, out, h); });
  if (!cg.graph) return false;
  std::unordered_map<int64_t, void*> ptrs{{kQ, q.raw_data()},   {kK, k.raw_data()},   {kV, v.raw_data()},
                                          {kO, out.raw_data()}, {kStats, lse.raw_data()}};
  execute(cg, h, ptrs, d.device, stream, "attention_forward");
  forward_runs.fetch_add(1, std::memory_order_relaxed);
  return true;
}

bool cudnn_attention_backward(const AttentionDims& d, const Tensor& dout, const Tensor& q, const Tensor& k,
                              const Tensor& v, const Tensor& out, const Tensor& lse, Tensor& dq, Tensor& dk,
                              Tensor& dv, cudaStream_t stream) {
  if (!takes(d, lse, {&q, &k, &v, &out, &dout, &dq, &dk, &dv})) return false;
  SdpaCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex());
  cudnnHandle_t h = c.handle(d.device);
  const CachedGraph& cg = c.get(key_of(d, 1, {&q, &k, &v, &out, &dout, &dq, &dk, &dv}), [&] {
    CachedGraph g = build_backward(d, dout, q, k, v, out, dq, dk, dv, h, /*deterministic=*/true);
    return g.graph ? g : build_backward(d, dout, q, k, v, out, dq, dk, dv, h, /*deterministic=*/false);
  });
  if (!cg.graph) return false;
  std::unordered_map<int64_t, void*> ptrs{{kQ, q.raw_data()},     {kK, k.raw_data()},   {kV, v.raw_data()},
                                          {kO, out.raw_data()},   {kdO, dout.raw_data()}, {kStats, lse.raw_data()},
                                          {kdQ, dq.raw_data()},   {kdK, dk.raw_data()}, {kdV, dv.raw_data()}};
  execute(cg, h, ptrs, d.device, stream, "attention_backward");
  backward_runs.fetch_add(1, std::memory_order_relaxed);
  return true;
}

CudnnAttentionRuns cudnn_attention_runs() {
  return {forward_runs.load(std::memory_order_relaxed), backward_runs.load(std::memory_order_relaxed)};
}

bool cudnn_attention_enabled() { return enabled(); }

}  // namespace anvil::kernels::cuda::detail
