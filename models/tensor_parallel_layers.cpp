#include "models/tensor_parallel_layers.h"

#include "kernels/elementwise.h"
#include "kernels/embedding.h"
#include "kernels/matmul.h"
#include "models/layers.h"

namespace anvil {

namespace {
Param no_param() { return Param("", Tensor(), ParamRole::Vector); }
int degree(const Communicator* tp) { return tp ? tp->size() : 1; }
int rank_of(const Communicator* tp) { return tp ? tp->rank() : 0; }

// The local extent of a dim split over tp (parts split separately), checked to divide.
int64_t local_extent(const std::string& what, const std::vector<int64_t>& parts, const Communicator* tp) {
  int64_t n = 0;
  for (int64_t part : parts) {
    ANVIL_CHECK(part % degree(tp) == 0, what, ": size ", part, " does not split evenly over tp = ", degree(tp),
                " — pick a tensor-parallel degree that divides it (see validate_layout)");
    n += part / degree(tp);
  }
  return n;
}

// Marks a param as this rank's shard of `dim` (nothing without a tp communicator).
void shard_param(Param& p, int dim, const std::vector<int64_t>& parts, const Communicator* tp) {
  if (tp && p.value.defined()) p.shard = even_shard(Axis::TP, dim, parts, rank_of(tp), degree(tp), p.name);
}

// x as a contiguous [rows, in] matrix, after checking its last dim against the weight.
Tensor matrix_input(const Tensor& x, const Param& weight) {
  const int64_t in = weight.value.size(1);
  ANVIL_CHECK(x.dim() >= 1 && x.size(-1) == in, weight.name, ": input ", x.describe(), " has last dim ",
              x.dim() ? x.size(-1) : 0, ", expected ", in, " (this rank's shard)");
  return x.contiguous().view({-1, in});
}
}  // namespace

// ---- ColumnParallelLinear ----

ColumnParallelLinear::ColumnParallelLinear(const std::string& name, int64_t in, int64_t out, bool with_bias,
                                           Communicator* tp, const std::vector<int64_t>& parts_in)
    : tp_(tp), weight_(no_param()), bias_(no_param()) {
  const std::vector<int64_t> parts = parts_in.empty() ? std::vector<int64_t>{out} : parts_in;
  const int64_t local_out = local_extent(name, parts, tp);
  weight_ = Param(name + ".weight", Tensor::zeros({local_out, in}), ParamRole::Matrix);
  shard_param(weight_, 0, parts, tp);
  if (with_bias) {
    bias_ = Param(name + ".bias", Tensor::zeros({local_out}), ParamRole::Vector);
    shard_param(bias_, 0, parts, tp);
  }
}

ColumnParallelLinear::ColumnParallelLinear(Param& tied_weight, Communicator* tp)
    : tp_(tp), weight_(no_param()), bias_(no_param()), tied_(&tied_weight) {}

Tensor ColumnParallelLinear::apply(const Tensor& x2) const {
  const Param& w = weight();
  Tensor y = empty_like(x2, {x2.size(0), w.value.size(0)});
  if (has_bias()) kernels::matmul_bias(x2, false, w.value, true, bias_.value, y);
  else kernels::matmul(x2, false, w.value, true, y);
  return y;
}

Tensor ColumnParallelLinear::forward(const Tensor& x, Cache& c) {
  const Tensor x2 = matrix_input(CopyToTensorParallelRegion::forward(tp_, x), weight());
  c["x"] = x2;
  return apply(x2).view(with_last_dim(x.shape(), weight().value.size(0)));
}

Tensor ColumnParallelLinear::infer(const Tensor& x) {
  return apply(matrix_input(x, weight())).view(with_last_dim(x.shape(), weight().value.size(0)));
}

Tensor ColumnParallelLinear::input_grad(const Tensor& dy) const {
  const Param& w = weight();
  const Tensor dy2 = dy.contiguous().view({-1, w.value.size(0)});
  Tensor dx = empty_like(dy2, {dy2.size(0), w.value.size(1)});
  kernels::matmul(dy2, false, w.value, false, dx);
  return dx.view(with_last_dim(dy.shape(), w.value.size(1)));
}

void ColumnParallelLinear::param_grads(const Tensor& dy, Cache& c) {
  Param& w = weight();
  const Tensor dy2 = dy.contiguous().view({-1, w.value.size(0)});
  if (w.trainable) kernels::matmul(dy2, true, c.get("x"), false, w.grad, 1.0f, 1.0f);
  if (has_bias() && bias_.trainable) kernels::bias_grad(dy2, bias_.grad);
  c.clear();
}

Tensor ColumnParallelLinear::backward(const Tensor& dy, Cache& c) { return column_parallel_backward({this}, {dy}, {&c}); }

void ColumnParallelLinear::collect_params(std::vector<Param*>& out) {
  if (!tied_) out.push_back(&weight_);
  if (has_bias()) out.push_back(&bias_);
}

Tensor column_parallel_backward(const std::vector<ColumnParallelLinear*>& layers, const std::vector<Tensor>& dys,
                                const std::vector<Cache*>& caches) {
  ANVIL_CHECK(!layers.empty() && dys.size() == layers.size() && caches.size() == layers.size(),
              "column_parallel_backward: ", layers.size(), " layers, ", dys.size(), " gradients and ", caches.size(),
              " caches — pass one of each per layer");
  Tensor dx = layers[0]->input_grad(dys[0]);
  for (size_t i = 1; i < layers.size(); ++i) kernels::add_inplace(dx, layers[i]->input_grad(dys[i]));
  // The input-gradient collective first; the weight gradients are computed while it runs.
  auto reduce = CopyToTensorParallelRegion::backward_start(layers[0]->tp(), dx);
  for (size_t i = 0; i < layers.size(); ++i) layers[i]->param_grads(dys[i], *caches[i]);
  reduce->wait();
  return dx;
}

// ---- RowParallelLinear ----

RowParallelLinear::RowParallelLinear(const std::string& name, int64_t in, int64_t out, bool with_bias,
                                     Communicator* tp)
    : weight(name + ".weight", Tensor::zeros({out, local_extent(name, {in}, tp)}), ParamRole::Matrix),
      bias(with_bias ? Param(name + ".bias", Tensor::zeros({out}), ParamRole::Vector) : no_param()),
      tp_(tp) {
  shard_param(weight, 1, {in}, tp);
}

Tensor RowParallelLinear::apply(const Tensor& x2, const Shape& x_shape) const {
  const int64_t out = weight.value.size(0);
  Tensor y = empty_like(x2, {x2.size(0), out});
  kernels::matmul(x2, false, weight.value, true, y);
  ReduceFromTensorParallelRegion::forward(tp_, y);  // sum of the ranks' partial products
  if (has_bias()) kernels::add_bias(y, bias.value);  // once, after the reduction
  return y.view(with_last_dim(x_shape, out));
}

Tensor RowParallelLinear::forward(const Tensor& x, Cache& c) {
  const Tensor x2 = matrix_input(x, weight);
  c["x"] = x2;
  return apply(x2, x.shape());
}

Tensor RowParallelLinear::infer(const Tensor& x) { return apply(matrix_input(x, weight), x.shape()); }

Tensor RowParallelLinear::backward(const Tensor& dy_in, Cache& c) {
  const Tensor& dy = ReduceFromTensorParallelRegion::backward(tp_, dy_in);
  const Tensor x2 = c.get("x");
  const int64_t in = weight.value.size(1), out = weight.value.size(0);
  const Tensor dy2 = dy.contiguous().view({-1, out});
  Tensor dx = empty_like(dy2, {dy2.size(0), in});
  kernels::matmul(dy2, false, weight.value, false, dx);
  if (weight.trainable) kernels::matmul(dy2, true, x2, false, weight.grad, 1.0f, 1.0f);
  if (has_bias() && bias.trainable) kernels::bias_grad(dy2, bias.grad);
  c.clear();
  return dx.view(with_last_dim(dy.shape(), in));
}

void RowParallelLinear::collect_params(std::vector<Param*>& out) {
  out.push_back(&weight);
  if (has_bias()) out.push_back(&bias);
}

// ---- VocabParallelEmbedding ----

VocabParallelEmbedding::VocabParallelEmbedding(const std::string& name, int64_t num, int64_t dim, Communicator* tp)
    : weight(name + ".weight", Tensor::zeros({local_extent(name, {num}, tp), dim}), ParamRole::Embedding),
      tp_(tp),
      num_embeddings_(num),
      vocab_start_(rank_of(tp) * (num / degree(tp))) {
  shard_param(weight, 0, {num}, tp);
}

Tensor VocabParallelEmbedding::infer(const Tensor& ids_in) {
  check_dtype(ids_in, DType::I32, "embedding ids");
  const Tensor ids = ids_in.contiguous();
  const int64_t dim = weight.value.size(1);
  Shape out_shape = ids.shape();
  out_shape.push_back(dim);
  Tensor y = empty_like(weight.value, {ids.numel(), dim});  // the table's dtype and device
  if (!tp_) {
    kernels::embedding_forward(ids, weight.value, y);
    return y.view(out_shape);
  }
  const Tensor host_ids = ids.to(Device::cpu());  // the range check reads the ids on the host
  const int32_t* p = host_ids.data<int32_t>();
  for (int64_t i = 0; i < ids.numel(); ++i)
    ANVIL_CHECK(p[i] >= 0 && p[i] < num_embeddings_, weight.name, ": id ", p[i], " at position ", i,
                " is outside the vocabulary [0, ", num_embeddings_,
                ") — check the tokenizer's vocabulary size against the model's");
  kernels::embedding_shard_forward(ids, weight.value, vocab_start_, y);
  ReduceFromTensorParallelRegion::forward(tp_, y);  // each id's row comes from its owning rank
  return y.view(out_shape);
}

Tensor VocabParallelEmbedding::forward(const Tensor& ids, Cache& c) {
  Tensor y = infer(ids);
  c["ids"] = ids.contiguous();
  return y;
}

Tensor VocabParallelEmbedding::backward(const Tensor& dy_in, Cache& c) {
  const Tensor& dy = ReduceFromTensorParallelRegion::backward(tp_, dy_in);
  if (weight.trainable) {
    const Tensor dy2 = dy.contiguous().view({-1, weight.value.size(1)});
    if (tp_) kernels::embedding_shard_backward(c.get("ids"), dy2, vocab_start_, weight.grad);
    else kernels::embedding_backward(c.get("ids"), dy2, weight.grad);
  }
  c.clear();
  return Tensor();
}

void VocabParallelEmbedding::collect_params(std::vector<Param*>& out) { out.push_back(&weight); }

}  // namespace anvil
