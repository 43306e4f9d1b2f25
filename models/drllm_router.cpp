#include "models/drllm_router.h"

#include <algorithm>

#include "kernels/activation.h"
#include "kernels/matmul.h"

namespace anvil {

int64_t drllm_window_count(int64_t T, int64_t windows) {
  ANVIL_CHECK(windows >= 1, "Dr.LLM router: windows must be >= 1, got ", windows);
  ANVIL_CHECK(T >= 1, "Dr.LLM router: a sequence needs at least one token, got T = ", T);
  return T >= windows ? windows : 1;
}

Tensor drllm_windowed_means(const Tensor& x, int64_t windows) {
  ANVIL_CHECK(x.dim() == 3, "Dr.LLM router: the layer input must be [batch, T, hidden], got ", x.describe());
  const int64_t T = x.size(1), W = drllm_window_count(T, windows), n = T / W;
  // Row w of the averaging matrix is 1/n over window w's tokens (the tail past W * n gets 0).
  Tensor avg = Tensor::zeros({1, W, T});
  float* p = avg.data<float>();
  for (int64_t w = 0; w < W; ++w)
    for (int64_t t = w * n; t < (w + 1) * n; ++t) p[w * T + t] = 1.0f / static_cast<float>(n);
  const Tensor a = avg.to(x.dtype()).to(x.device());
  Tensor means = empty_like(x, {x.size(0), W, x.size(2)});
  kernels::matmul(a, false, x.contiguous(), false, means);
  return means;
}

DrLLMRouter::DrLLMRouter(const std::string& layer_prefix, int64_t hidden_size, int64_t bottleneck)
    : fc1_(layer_prefix + ".router.fc1", hidden_size, bottleneck, true, Init::KaimingUniform),
      fc2_(layer_prefix + ".router.fc2", bottleneck, kBlockActions, true, Init::Zeros) {
  ANVIL_CHECK(bottleneck >= 1, layer_prefix, ".router: the bottleneck width (router.hidden) must be >= 1, got ",
              bottleneck);
  // fc2.bias = [0, 1, 0]: "execute" wins for every input until the router trains (see the header).
  Param& b2 = fc2_.bias();
  b2.init = Init::Keep;
  b2.value.fill_(0.0);
  b2.value.data<float>()[static_cast<int>(BlockAction::Execute)] = 1.0f;
}

Tensor DrLLMRouter::window_average(const Tensor& per_window) {
  const Tensor z = per_window.to(Device::cpu()).to(DType::F32).contiguous();
  const int64_t B = z.size(0), W = z.size(1);
  Tensor out = Tensor::zeros({B, kBlockActions});
  const float* pz = z.data<float>();
  float* po = out.data<float>();
  for (int64_t b = 0; b < B; ++b)
    for (int k = 0; k < kBlockActions; ++k) {
      double s = 0;
      for (int64_t w = 0; w < W; ++w) s += pz[(b * W + w) * kBlockActions + k];
      po[b * kBlockActions + k] = static_cast<float>(s / static_cast<double>(W));
    }
  return out;
}

Tensor DrLLMRouter::forward(const Tensor& means, Cache& c) {
  ANVIL_CHECK(means.dim() == 3 && means.size(2) == fc1_.linear.in_features(), fc1_.weight().name,
              ": the windowed means must be [batch, windows, ", fc1_.linear.in_features(), "], got ", means.describe());
  Tensor pre = fc1_.forward(means, c.child(0));
  Tensor act = empty_like(pre, pre.shape());
  kernels::gelu_forward(pre, act);
  c["pre"] = pre;
  return window_average(fc2_.forward(act, c.child(1)));
}

Tensor DrLLMRouter::infer(const Tensor& means) {
  Tensor h = fc1_.infer(means);
  kernels::gelu_forward(h, h);
  return window_average(fc2_.infer(h));
}

Tensor DrLLMRouter::backward(const Tensor& dlogits, Cache& c) {
  const Tensor& pre = c.get("pre");
  const int64_t B = pre.size(0), W = pre.size(1);
  const Tensor dz = dlogits.to(Device::cpu()).to(DType::F32).contiguous();
  ANVIL_CHECK(dz.dim() == 2 && dz.size(0) == B && dz.size(1) == kBlockActions, fc2_.weight().name,
              ": the logits' gradient must be [", B, ", 3], got ", dlogits.describe());
  // z is the mean over windows of fc2's per-window logits: each window gets dz / W.
  Tensor per_window = Tensor::empty({B, W, kBlockActions});
  const float* pd = dz.data<float>();
  float* pw = per_window.data<float>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t w = 0; w < W; ++w)
      for (int k = 0; k < kBlockActions; ++k)
        pw[(b * W + w) * kBlockActions + k] = pd[b * kBlockActions + k] / static_cast<float>(W);
  const Tensor dact = fc2_.backward(per_window.to(pre.dtype()).to(pre.device()), c.child(1));
  Tensor dpre = empty_like(pre, pre.shape());
  kernels::gelu_backward(dact, pre, dpre);
  fc1_.backward(dpre, c.child(0));  // its input gradient is dropped: the means are detached
  c.clear();
  return Tensor();
}

void DrLLMRouter::collect_params(std::vector<Param*>& out) {
  fc1_.collect_params(out);
  fc2_.collect_params(out);
}

std::vector<int32_t> drllm_actions(const Tensor& logits) {
  const Tensor z = logits.to(Device::cpu()).to(DType::F32).contiguous();
  ANVIL_CHECK(z.dim() == 2 && z.size(1) == kBlockActions, "Dr.LLM router: logits must be [batch, 3], got ",
              logits.describe());
  std::vector<int32_t> out(static_cast<size_t>(z.size(0)));
  const float* p = z.data<float>();
  for (int64_t b = 0; b < z.size(0); ++b) {
    int best = 0;
    for (int k = 1; k < kBlockActions; ++k)
      if (p[b * kBlockActions + k] > p[b * kBlockActions + best]) best = k;
    out[static_cast<size_t>(b)] = best;
  }
  return out;
}

DrLLMRouters::DrLLMRouters(const std::vector<int64_t>& layers, int64_t first, int64_t count, int64_t hidden_size,
                           int64_t bottleneck, int64_t windows, const std::function<std::string(int64_t)>& prefix_of)
    : all_layers_(layers), first_(first), windows_(windows) {
  ANVIL_CHECK(windows >= 1, "Dr.LLM routers: router.windows must be >= 1, got ", windows);
  routers_.resize(static_cast<size_t>(count));
  for (int64_t l : layers)
    if (l >= first && l < first + count)
      routers_[static_cast<size_t>(l - first)] = std::make_unique<DrLLMRouter>(prefix_of(l), hidden_size, bottleneck);
}

DrLLMRouter* DrLLMRouters::at(int64_t global_layer) {
  const int64_t i = global_layer - first_;
  if (i < 0 || i >= static_cast<int64_t>(routers_.size())) return nullptr;
  return routers_[static_cast<size_t>(i)].get();
}

std::vector<int64_t> DrLLMRouters::stage_layers() const {
  std::vector<int64_t> out;
  for (size_t i = 0; i < routers_.size(); ++i)
    if (routers_[i]) out.push_back(first_ + static_cast<int64_t>(i));
  return out;
}

void DrLLMRouters::collect_params(std::vector<Param*>& out) {
  for (auto& r : routers_)
    if (r) r->collect_params(out);
}

}  // namespace anvil
