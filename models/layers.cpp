#include "models/layers.h"

#include "kernels/elementwise.h"
#include "kernels/embedding.h"
#include "kernels/norm.h"

namespace anvil {

Shape with_last_dim(const Shape& shape, int64_t last) {
  Shape s = shape;
  s.back() = last;
  return s;
}

Linear::Linear(const std::string& name, int64_t in_features, int64_t out_features, bool with_bias, Init init)
    : linear(name, out_features, in_features, with_bias, init) {}

Tensor Linear::forward(const Tensor& x, Cache& c) {
  const Tensor x2 = linear.input_matrix(x);
  c["x"] = x2;
  return linear.forward(x2, true, c.context().dropout).view(with_last_dim(x.shape(), linear.out_features()));
}

Tensor Linear::infer(const Tensor& x) {
  return linear.forward(linear.input_matrix(x)).view(with_last_dim(x.shape(), linear.out_features()));
}

Tensor Linear::backward(const Tensor& dy, Cache& c) {
  const Tensor dy2 = dy.contiguous().view({-1, linear.out_features()});
  const DropoutKey& key = c.context().dropout;
  const Tensor dx = linear.input_grad(dy2, key);
  linear.accumulate_grads(dy2, c.get("x"), key);
  c.clear();
  return dx.view(with_last_dim(dy.shape(), linear.in_features()));
}

void Linear::collect_params(std::vector<Param*>& out) { linear.collect_params(out); }

void Linear::collect_linears(std::vector<LinearWeight*>& out) { out.push_back(&linear); }

size_t Linear::activation_bytes(const ActivationDims& d) const { return d.tokens * linear.in_features() * d.act; }

Embedding::Embedding(const std::string& name, int64_t num_embeddings, int64_t dim)
    : weight(name + ".weight", Tensor::zeros({num_embeddings, dim}), ParamRole::Embedding, Init::Normal) {}

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
    : weight(name + ".weight", Tensor::full({dim}, 1.0), ParamRole::Vector, Init::Ones),
      bias(name + ".bias", Tensor::zeros({dim}), ParamRole::Vector, Init::Zeros),
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

// LayerNorm saves its input and two f32 statistics per row (mean, rstd); RMSNorm only rstd.
size_t LayerNorm::activation_bytes(const ActivationDims& d) const {
  return d.tokens * weight.value.size(0) * d.act + 2 * d.tokens * d.stat;
}
size_t RMSNorm::activation_bytes(const ActivationDims& d) const {
  return d.tokens * weight.value.size(0) * d.act + d.tokens * d.stat;
}

void LayerNorm::collect_params(std::vector<Param*>& out) {
  out.push_back(&weight);
  out.push_back(&bias);
}

RMSNorm::RMSNorm(const std::string& name, int64_t dim, double e)
    : weight(name + ".weight", Tensor::full({dim}, 1.0), ParamRole::Vector, Init::Ones), eps(static_cast<float>(e)) {}

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
