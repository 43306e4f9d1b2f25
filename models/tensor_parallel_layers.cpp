#include "models/tensor_parallel_layers.h"

#include "kernels/elementwise.h"
#include "kernels/embedding.h"
#include "models/layers.h"

namespace anvil {

namespace {
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

}  // namespace

// ---- ColumnParallelLinear ----

namespace {
std::vector<int64_t> or_whole(const std::vector<int64_t>& parts, int64_t whole) {
  return parts.empty() ? std::vector<int64_t>{whole} : parts;
}
}  // namespace

ColumnParallelLinear::ColumnParallelLinear(const std::string& name, int64_t in, int64_t out, bool with_bias,
                                           Communicator* tp, const std::vector<int64_t>& parts, Init init)
    : tp_(tp), linear_(name, local_extent(name, or_whole(parts, out), tp), in, with_bias, init) {
  shard_param(linear_.weight(), 0, or_whole(parts, out), tp);
  shard_param(linear_.bias(), 0, or_whole(parts, out), tp);
}

ColumnParallelLinear::ColumnParallelLinear(Param& tied_weight, Communicator* tp) : tp_(tp), linear_(tied_weight) {}

Tensor ColumnParallelLinear::forward(const Tensor& x, Cache& c) {
  const Tensor x2 = linear_.input_matrix(CopyToTensorParallelRegion::forward(tp_, x));
  c["x"] = x2;
  return linear_.forward(x2, true, c.context().dropout).view(with_last_dim(x.shape(), linear_.out_features()));
}

Tensor ColumnParallelLinear::infer(const Tensor& x) {
  return linear_.forward(linear_.input_matrix(x)).view(with_last_dim(x.shape(), linear_.out_features()));
}

Tensor ColumnParallelLinear::input_grad(const Tensor& dy, const Cache& c) const {
  const Tensor dx = linear_.input_grad(dy.contiguous().view({-1, linear_.out_features()}), c.context().dropout);
  return dx.view(with_last_dim(dy.shape(), linear_.in_features()));
}

void ColumnParallelLinear::param_grads(const Tensor& dy, Cache& c) {
  linear_.accumulate_grads(dy.contiguous().view({-1, linear_.out_features()}), c.get("x"), c.context().dropout, tp_);
  c.clear();
}

Tensor ColumnParallelLinear::backward(const Tensor& dy, Cache& c) { return column_parallel_backward({this}, {dy}, {&c}); }

void ColumnParallelLinear::collect_params(std::vector<Param*>& out) { linear_.collect_params(out); }

void ColumnParallelLinear::collect_linears(std::vector<LinearWeight*>& out) {
  if (!linear_.tied()) out.push_back(&linear_);
}

size_t ColumnParallelLinear::activation_bytes(const ActivationDims& d) const {
  return d.tokens * linear_.in_features() * d.act;
}

Tensor column_parallel_backward(const std::vector<ColumnParallelLinear*>& layers, const std::vector<Tensor>& dys,
                                const std::vector<Cache*>& caches) {
  ANVIL_CHECK(!layers.empty() && dys.size() == layers.size() && caches.size() == layers.size(),
              "column_parallel_backward: ", layers.size(), " layers, ", dys.size(), " gradients and ", caches.size(),
              " caches — pass one of each per layer");
  Tensor dx = layers[0]->input_grad(dys[0], *caches[0]);
  for (size_t i = 1; i < layers.size(); ++i) kernels::add_inplace(dx, layers[i]->input_grad(dys[i], *caches[i]));
  // The input-gradient collective first; the weight gradients are computed while it runs.
  auto reduce = CopyToTensorParallelRegion::backward_start(layers[0]->tp(), dx);
  for (size_t i = 0; i < layers.size(); ++i) layers[i]->param_grads(dys[i], *caches[i]);
  reduce->wait();
  return dx;
}

// ---- RowParallelLinear ----

RowParallelLinear::RowParallelLinear(const std::string& name, int64_t in, int64_t out, bool with_bias,
                                     Communicator* tp, Init init)
    : tp_(tp), linear_(name, out, local_extent(name, {in}, tp), with_bias, init) {
  shard_param(linear_.weight(), 1, {in}, tp);
}

Tensor RowParallelLinear::apply(const Tensor& x2, const Shape& x_shape, const DropoutKey& key) const {
  Tensor y = linear_.forward(x2, /*with_bias=*/false, key);
  ReduceFromTensorParallelRegion::forward(tp_, y);  // sum of the ranks' partial products
  linear_.add_bias(y);                              // once, after the reduction
  return y.view(with_last_dim(x_shape, linear_.out_features()));
}

Tensor RowParallelLinear::forward(const Tensor& x, Cache& c) {
  const Tensor x2 = linear_.input_matrix(x);
  c["x"] = x2;
  return apply(x2, x.shape(), c.context().dropout);
}

Tensor RowParallelLinear::infer(const Tensor& x) { return apply(linear_.input_matrix(x), x.shape(), DropoutKey()); }

Tensor RowParallelLinear::backward(const Tensor& dy_in, Cache& c) {
  const Tensor& dy = ReduceFromTensorParallelRegion::backward(tp_, dy_in);
  const Tensor dy2 = dy.contiguous().view({-1, linear_.out_features()});
  const DropoutKey& key = c.context().dropout;
  const Tensor dx = linear_.input_grad(dy2, key);
  linear_.accumulate_grads(dy2, c.get("x"), key, tp_);
  c.clear();
  return dx.view(with_last_dim(dy.shape(), linear_.in_features()));
}

void RowParallelLinear::collect_params(std::vector<Param*>& out) { linear_.collect_params(out); }

void RowParallelLinear::collect_linears(std::vector<LinearWeight*>& out) { out.push_back(&linear_); }

size_t RowParallelLinear::activation_bytes(const ActivationDims& d) const {
  return d.tokens * linear_.in_features() * d.act;
}

// ---- VocabParallelEmbedding ----

VocabParallelEmbedding::VocabParallelEmbedding(const std::string& name, int64_t num, int64_t dim, Communicator* tp)
    : weight(name + ".weight", Tensor::zeros({local_extent(name, {num}, tp), dim}), ParamRole::Embedding, Init::Normal),
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
