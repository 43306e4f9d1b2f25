// Dr.LLM-style layer routers (Heakl et al. 2025, arXiv 2510.12773): before a routed layer l, a
// bottleneck MLP r_l = Linear(d, h) - GELU - Linear(h, 3) reads windowed means of the layer's
// INPUT hidden state and chooses, per sequence, one of three block actions: skip (y = x),
// execute (y = block(x)) or repeat (y = block(block(x))).
//
// Windowed mean: the first W * floor(T / W) tokens are split into W contiguous windows of
// floor(T / W) tokens (the tail is dropped); with T < W there is one window over all T tokens.
// Logits z = (1/W') sum_w fc2(GELU(fc1(m_w))) over the W' windows; the action is argmax z (ties:
// the lowest action). GELU is kernels::gelu_forward's tanh form (GPT-2's gelu_new); the paper's
// nn.GELU is the erf form (they differ by < 1e-3).
//
// Training is supervised (trainer/drllm_task.h): the router's input is detached (no gradient
// reaches the backbone), so the router is a module on the windowed means alone.
//
// Init: fc1.weight U(±1/sqrt(d)) (nn.Linear's default, Init::KaimingUniform), fc1.bias 0,
// fc2.weight 0 and fc2.bias = [0, 1, 0], so an untrained router's logits are exactly
// [0, 1, 0] for every input: every layer executes and the routed model equals the base bit
// for bit. (The first step's gradient reaches fc2 only, as LoRA's B = 0; fc1 trains from then on.)
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "models/layers.h"
#include "models/module.h"

namespace anvil {

enum class BlockAction : int32_t { Skip = 0, Execute = 1, Repeat = 2 };
constexpr int kBlockActions = 3;
// The Cache key a layer's cache holds when it ran under skip/repeat actions (nothing saved for backward).
inline constexpr const char* kDrLLMActed = "drllm_acted";

// The number of windows W' of a sequence of T tokens: W when T >= W, else 1.
int64_t drllm_window_count(int64_t T, int64_t windows);
// The windowed means m [B, W', d] of x [B, T, d] (x's dtype and device): one batched product
// with the [W', T] averaging matrix.
Tensor drllm_windowed_means(const Tensor& x, int64_t windows);

class DrLLMRouter : public Module {
 public:
  // prefix: the layer's parameter prefix ("model.layers.5"); params <prefix>.router.fc1.weight
  // [h, d], .fc1.bias [h], .fc2.weight [3, h], .fc2.bias [3].
  DrLLMRouter(const std::string& layer_prefix, int64_t hidden_size, int64_t bottleneck);
  // means [B, W', d] (drllm_windowed_means, the model's compute dtype) -> logits f32 [B, 3] on the
  // host. Saves what backward needs in c.
  Tensor forward(const Tensor& means, Cache& c) override;
  // dlogits f32 [B, 3] (host) -> accumulates the router's gradients; returns an undefined tensor
  // (the input is detached). Clears c.
  Tensor backward(const Tensor& dlogits, Cache& c) override;
  Tensor infer(const Tensor& means) override;
  void collect_params(std::vector<Param*>& out) override;

 private:
  // fc2's per-window logits [B, W', 3] -> their mean over windows, f32 [B, 3] on the host.
  static Tensor window_average(const Tensor& per_window);
  Linear fc1_, fc2_;
};

// argmax over the 3 logits of each row (f32 [B, 3] host); ties go to the lower action.
std::vector<int32_t> drllm_actions(const Tensor& logits);

// This pipeline stage's routers, by global layer index.
class DrLLMRouters {
 public:
  // layers: the routed global layers (sorted, unique); only those in [first, first + count) are
  // built here; prefix_of(i): layer i's parameter prefix.
  DrLLMRouters(const std::vector<int64_t>& layers, int64_t first, int64_t count, int64_t hidden_size,
               int64_t bottleneck, int64_t windows, const std::function<std::string(int64_t)>& prefix_of);
  DrLLMRouter* at(int64_t global_layer);  // null when the layer has no router
  const std::vector<int64_t>& all_layers() const { return all_layers_; }  // every stage's routed layers
  std::vector<int64_t> stage_layers() const;                             // this stage's, sorted
  int64_t windows() const { return windows_; }
  void collect_params(std::vector<Param*>& out);

 private:
  std::vector<int64_t> all_layers_;
  int64_t first_, windows_;
  std::vector<std::unique_ptr<DrLLMRouter>> routers_;  // per local layer; null = unrouted
};

}  // namespace anvil
