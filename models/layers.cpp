#include "models/layers.h"

#include "kernels/elementwise.h"
#include "kernels/embedding.h"
#include "kernels/matmul.h"
#include "kernels/norm.h"

namespace anvil {

namespace {
Param no_param() { return Param("", Tensor(), ParamRole::Vector); }
}  // namespace

Shape with_last_dim(const Shape& shape, int64_t last) {
  Shape s = shape;
  s.back() = last;
  return s;
}

Linear::Linear(const std::string& name, int64_t in_features, int64_t out_features, bool with_bias)
    : weight(name + ".weight", Tensor::zeros({out_features, in_features}), ParamRole::Matrix),
      bias(with_bias ? Param(name + ".bias", Tensor::zeros({out_features}), ParamRole::Vector) : no_param()) {}

namespace {
// x as a contiguous [rows, in] matrix, after checking its last dim.
Tensor linear_input(const Tensor& x, const Param& weight) {
  const int64_t in = weight.value.size(1);
  ANVIL_CHECK(x.dim() >= 1 && x.size(-1) == in, weight.name, ": input ", x.describe(), " has last dim ",
              x.dim() ? x.size(-1) : 0, ", expected ", in);
  return x.contiguous().view({-1, in});
}
}  // namespace

Tensor Linear::apply(const Tensor& x2, const Shape& x_shape) const {
  const int64_t out = weight.value.size(0);
  Tensor y = empty_like(x2, {x2.size(0), out});
  if (has_bias()) kernels::matmul_bias(x2, false, weight.value, true, bias.value, y);
  else kernels::matmul(x2, false, weight.value, true, y);
  return y.view(with_last_dim(x_shape, out));
}

Tensor Linear::forward(const Tensor& x, Cache& c) {
  const Tensor x2 = linear_input(x, weight);
  c["x"] = x2;
  return apply(x2, x.shape());
}

Tensor Linear::infer(const Tensor& x) { return apply(linear_input(x, weight), x.shape()); }

Tensor Linear::backward(const Tensor& dy, Cache& c) {
  const Tensor x2 = c.get("x");
  const int64_t in = weight.value.size(1), out = weight.value.size(0);
  const Tensor dy2 = dy.contiguous().view({-1, out});
  // Input gradient first: under tensor parallelism its collective starts while dW is computed.
  Tensor dx = empty_like(dy2, {dy2.size(0), in});
  kernels::matmul(dy2, false, weight.value, false, dx);
  if (weight.trainable) kernels::matmul(dy2, true, x2, false, weight.grad, 1.0f, 1.0f);
  if (has_bias() && bias.trainable) kernels::bias_grad(dy2, bias.grad);
  c.clear();
  return dx.view(with_last_dim(dy.shape(), in));
}

void Linear::collect_params(std::vector<Param*>& out) {
  out.push_back(&weight);
  if (has_bias()) out.push_back(&bias);
}

Embedding::Embedding(const std::string& name, int64_t num_embeddings, int64_t dim)
    : weight(name + ".weight", Tensor::zeros({num_embeddings, dim}), ParamRole::Embedding) {}

Tensor Embedding::infer(const Tensor& ids) {
  check_dtype(ids, DType::I32, "embedding ids");
  const int64_t dim = weight.value.size(1);
  Shape out_shape = ids.shape();
  out_shape.push_back(dim);
  Tensor y = empty_like(weight.value, {ids.numel(), dim});  // the table's dtype and device
  kernels::embedding_forward(ids.contiguous(), weight.value, y);
  return y.view(out_shape);
}

Tensor Embedding::forward(const Tensor& ids, Cache& c) {
  Tensor y = infer(ids);
  c["ids"] = ids.contiguous();
  return y;
}

Tensor Embedding::backward(const Tensor& dy, Cache& c) {
  if (weight.trainable)
    kernels::embedding_backward(c.get("ids"), dy.contiguous().view({-1, weight.value.size(1)}), weight.grad);
  c.clear();
  return Tensor();
}

void Embedding::collect_params(std::vector<Param*>& out) { out.push_back(&weight); }

LayerNorm::LayerNorm(const std::string& name, int64_t dim, double e)
    : weight(name + ".weight", Tensor::full({dim}, 1.0), ParamRole::Vector),
      bias(name + ".bias", Tensor::zeros({dim}), ParamRole::Vector),
      eps(static_cast<float>(e)) {}

Tensor LayerNorm::forward(const Tensor& x, Cache& c) {
  const int64_t dim = weight.value.size(0);
  ANVIL_CHECK(x.size(-1) == dim, weight.name, ": input ", x.describe(), " does not end in ", dim);
  const Tensor x2 = x.contiguous().view({-1, dim});
  Tensor y = empty_like(x2, x2.shape()), mean = empty_like(x2, {x2.size(0)}, DType::F32),
         rstd = empty_like(x2, {x2.size(0)}, DType::F32);
  kernels::layernorm_forward(x2, weight.value, bias.value, eps, y, mean, rstd);
  c["x"] = x2;
  c["mean"] = mean;
  c["rstd"] = rstd;
  return y.view(x.shape());
}

Tensor LayerNorm::infer(const Tensor& x) {
  const int64_t dim = weight.value.size(0);
  ANVIL_CHECK(x.size(-1) == dim, weight.name, ": input ", x.describe(), " does not end in ", dim);
  const Tensor x2 = x.contiguous().view({-1, dim});
  // The kernel writes the row statistics; at inference they are scratch.
  Tensor y = empty_like(x2, x2.shape()), mean = empty_like(x2, {x2.size(0)}, DType::F32),
         rstd = empty_like(x2, {x2.size(0)}, DType::F32);
  kernels::layernorm_forward(x2, weight.value, bias.value, eps, y, mean, rstd);
  return y.view(x.shape());
}

Tensor LayerNorm::backward(const Tensor& dy, Cache& c) {
  const Tensor x2 = c.get("x");
  Tensor dx = empty_like(x2, x2.shape());
  Tensor dw = weight.trainable ? weight.grad : Tensor();
  Tensor db = bias.trainable ? bias.grad : Tensor();
  kernels::layernorm_backward(dy.contiguous().view(x2.shape()), x2, weight.value, c.get("mean"), c.get("rstd"),
                              dx, dw, db);
  c.clear();
  return dx.view(dy.shape());
}

void LayerNorm::collect_params(std::vector<Param*>& out) {
  out.push_back(&weight);
  out.push_back(&bias);
}

RMSNorm::RMSNorm(const std::string& name, int64_t dim, double e)
    : weight(name + ".weight", Tensor::full({dim}, 1.0), ParamRole::Vector), eps(static_cast<float>(e)) {}

Tensor RMSNorm::forward(const Tensor& x, Cache& c) {
  const int64_t dim = weight.value.size(0);
  ANVIL_CHECK(x.size(-1) == dim, weight.name, ": input ", x.describe(), " does not end in ", dim);
  const Tensor x2 = x.contiguous().view({-1, dim});
  Tensor y = empty_like(x2, x2.shape()), rstd = empty_like(x2, {x2.size(0)}, DType::F32);
  kernels::rmsnorm_forward(x2, weight.value, eps, y, rstd);
  c["x"] = x2;
  c["rstd"] = rstd;
  return y.view(x.shape());
}

Tensor RMSNorm::infer(const Tensor& x) {
  const int64_t dim = weight.value.size(0);
  ANVIL_CHECK(x.size(-1) == dim, weight.name, ": input ", x.describe(), " does not end in ", dim);
  const Tensor x2 = x.contiguous().view({-1, dim});
  Tensor y = empty_like(x2, x2.shape()), rstd = empty_like(x2, {x2.size(0)}, DType::F32);  // rstd: scratch
  kernels::rmsnorm_forward(x2, weight.value, eps, y, rstd);
  return y.view(x.shape());
}

Tensor RMSNorm::backward(const Tensor& dy, Cache& c) {
  const Tensor x2 = c.get("x");
  Tensor dx = empty_like(x2, x2.shape());
  Tensor dw = weight.trainable ? weight.grad : Tensor();
  kernels::rmsnorm_backward(dy.contiguous().view(x2.shape()), x2, weight.value, c.get("rstd"), dx, dw);
  c.clear();
  return dx.view(dy.shape());
}

void RMSNorm::collect_params(std::vector<Param*>& out) { out.push_back(&weight); }

}  // namespace anvil
