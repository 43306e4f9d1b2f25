#include "models/linear_weight.h"

#include "kernels/elementwise.h"
#include "kernels/matmul.h"

namespace anvil {

namespace {
Param no_param() { return Param("", Tensor(), ParamRole::Vector); }
}  // namespace

LinearWeight::LinearWeight(const std::string& name, int64_t out, int64_t in, bool bias, Init init)
    : weight_(name + ".weight", Tensor::zeros({out, in}), ParamRole::Matrix, init),
      bias_(bias ? Param(name + ".bias", Tensor::zeros({out}), ParamRole::Vector, Init::Zeros) : no_param()) {}

LinearWeight::LinearWeight(Param& tied) : weight_(no_param()), bias_(no_param()), tied_(&tied) {}

Tensor LinearWeight::input_matrix(const Tensor& x) const {
  const int64_t in = in_features();
  ANVIL_CHECK(x.dim() >= 1 && x.size(-1) == in, weight().name, ": input ", x.describe(), " has last dim ",
              x.dim() ? x.size(-1) : 0, ", expected ", in, " (under tensor parallelism: this rank's shard)");
  return x.contiguous().view({-1, in});
}

Tensor LinearWeight::forward(const Tensor& x2, bool with_bias, const DropoutKey& key) const {
  const Param& w = weight();
  Tensor y = empty_like(x2, {x2.size(0), out_features()});
  if (with_bias && has_bias()) kernels::matmul_bias(x2, false, w.value, true, bias_.value, y);
  else kernels::matmul(x2, false, w.value, true, y);
  if (lora_) lora_->add_forward(x2, y, key);
  return y;
}

void LinearWeight::add_bias(Tensor& y) const {
  if (has_bias()) kernels::add_bias(y, bias_.value);
}

Tensor LinearWeight::input_grad(const Tensor& dy2, const DropoutKey& key) const {
  Tensor dx = empty_like(dy2, {dy2.size(0), in_features()});
  kernels::matmul(dy2, false, weight().value, false, dx);
  if (lora_) lora_->add_input_grad(dy2, dx, key);
  return dx;
}

void LinearWeight::accumulate_grads(const Tensor& dy2, const Tensor& x2, const DropoutKey& key, Communicator* tp) {
  Param& w = weight();
  if (w.trainable) kernels::matmul(dy2, true, x2, false, w.grad, 1.0f, 1.0f);
  if (has_bias() && bias_.trainable) kernels::bias_grad(dy2, bias_.grad);
  if (lora_) lora_->accumulate_grads(dy2, x2, key, tp);
}

LoraAdapter& LinearWeight::attach_lora(const LoraSpec& spec) {
  ANVIL_CHECK(!tied_, "a tied weight (", weight().name, ") takes no LoRA adapter — adapt the module that owns it");
  ANVIL_CHECK(!lora_, module_name(), " has a LoRA adapter already");
  lora_ = std::make_unique<LoraAdapter>(module_name(), out_features(), in_features(), weight_.shard, spec);
  return *lora_;
}

std::string LinearWeight::module_name() const {
  const std::string& name = weight().name;
  const std::string suffix = ".weight";
  const bool has_suffix = name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  return has_suffix ? name.substr(0, name.size() - suffix.size()) : name;
}

Tensor LinearWeight::merged() const {
  const Param& w = weight();
  ANVIL_CHECK(w.dense_float(), w.name, ": holds ", w.value.describe(),
              ", which has no dense form yet — only dense float weights can be exported");
  if (!lora_) return master_weight(w);
  Tensor m = master_weight(w).clone();
  kernels::add_inplace(m, lora_->delta_weight().to(m.device()));
  return m;
}

void LinearWeight::collect_params(std::vector<Param*>& out) {
  if (!tied_) out.push_back(&weight_);
  if (has_bias()) out.push_back(&bias_);
  if (lora_) {
    out.push_back(&lora_->A);
    out.push_back(&lora_->B);
  }
}

}  // namespace anvil
