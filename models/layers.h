// The leaf modules: Linear, Embedding, LayerNorm, RMSNorm.
#pragma once
#include <string>

#include "models/module.h"

namespace anvil {

// y = x W^T + b with W: [out, in] (PyTorch nn.Linear layout; GPT-2's Conv1D
// checkpoints store the transpose and are converted on load).
class Linear : public Module {
 public:
  Linear(const std::string& name, int64_t in_features, int64_t out_features, bool bias);
  Tensor forward(const Tensor& x, Cache& c) override;   // x: [..., in]
  Tensor backward(const Tensor& dy, Cache& c) override; // dy: [..., out]
  Tensor infer(const Tensor& x) override;
  void collect_params(std::vector<Param*>& out) override;

  Param weight;
  Param bias;  // value undefined when the layer has no bias
  bool has_bias() const { return bias.value.defined(); }

 private:
  Tensor apply(const Tensor& x2, const Shape& x_shape) const;  // x2: x as contiguous [rows, in]
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

  Param weight;
  float eps;
};

// Shape of x with its last dim replaced (used for [..., in] -> [..., out]).
Shape with_last_dim(const Shape& shape, int64_t last);

}  // namespace anvil
