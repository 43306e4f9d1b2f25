// The leaf modules: Linear, Embedding, LayerNorm, RMSNorm.
#pragma once
#include <string>

#include "models/linear_weight.h"
#include "models/module.h"

namespace anvil {

// y = x W^T + b with W: [out, in] (PyTorch nn.Linear layout; GPT-2's Conv1D
// checkpoints store the transpose and are converted on load). The weight is a LinearWeight.
class Linear : public Module {
 public:
  Linear(const std::string& name, int64_t in_features, int64_t out_features, bool bias, Init init = Init::Normal);
  Tensor forward(const Tensor& x, Cache& c) override;   // x: [..., in]
  Tensor backward(const Tensor& dy, Cache& c) override; // dy: [..., out]
  Tensor infer(const Tensor& x) override;
  void collect_params(std::vector<Param*>& out) override;
  void collect_linears(std::vector<LinearWeight*>& out) override;
  size_t activation_bytes(const ActivationDims& d) const override;  // its input

  LinearWeight linear;
  Param& weight() { return linear.weight(); }
  Param& bias() { return linear.bias(); }
  bool has_bias() const { return linear.has_bias(); }
};

// Token (or position) lookup; input is an i32 id tensor, backward returns an undefined dx.
class Embedding : public Module {
 public:
  Embedding(const std::string& name, int64_t num_embeddings, int64_t dim);
  Tensor forward(const Tensor& ids, Cache& c) override;
  Tensor backward(const Tensor& dy, Cache& c) override;
  Tensor infer(const Tensor& ids) override;
  void collect_params(std::vector<Param*>& out) override;

  Param weight;  // [num_embeddings, dim]
};

class LayerNorm : public Module {
 public:
  LayerNorm(const std::string& name, int64_t dim, double eps);
  Tensor forward(const Tensor& x, Cache& c) override;
  Tensor backward(const Tensor& dy, Cache& c) override;
  Tensor infer(const Tensor& x) override;
  void collect_params(std::vector<Param*>& out) override;

  size_t activation_bytes(const ActivationDims& d) const override;

  Param weight;
  Param bias;
  float eps;
};

class RMSNorm : public Module {
 public:
  RMSNorm(const std::string& name, int64_t dim, double eps);
  Tensor forward(const Tensor& x, Cache& c) override;
  Tensor backward(const Tensor& dy, Cache& c) override;
  Tensor infer(const Tensor& x) override;
  void collect_params(std::vector<Param*>& out) override;

  size_t activation_bytes(const ActivationDims& d) const override;

  Param weight;
  float eps;
};

// Shape of x with its last dim replaced (used for [..., in] -> [..., out]).
Shape with_last_dim(const Shape& shape, int64_t last);

}  // namespace anvil
