#include "models/lora.h"

#include <cmath>

#include "core/rng.h"
#include "kernels/dropout.h"
#include "kernels/elementwise.h"
#include "kernels/matmul.h"
#include "parallel/communicator.h"

namespace anvil {

float LoraSpec::scaling() const {
  const double denominator = rslora ? std::sqrt(static_cast<double>(r)) : static_cast<double>(r);
  return static_cast<float>(alpha / denominator);
}

namespace {
// A's split along in, in pooled columns: the weight's runs divided by the group size.
ShardSplit pooled_split(const ShardSplit& weight_split, int64_t g, const std::string& module) {
  ShardSplit split = weight_split;
  auto check = [&](int64_t n) {
    ANVIL_CHECK(n % g == 0, module, ": lora.qa_group ", g, " does not divide this rank's share of in (a run of ",
                n, " inputs starting at ", weight_split.runs.front().global_start,
                ") — a tensor-parallel split must keep pooling groups whole; pick a qa_group that divides in / tp");
    return n / g;
  };
  split.full_size = check(split.full_size);
  for (ShardRun& run : split.runs) {
    run.local_start = check(run.local_start);
    run.global_start = check(run.global_start);
    run.length = check(run.length);
  }
  return split;
}

// A's columns: in, or in / g for QA-LoRA (checked).
int64_t adapter_cols(const std::string& module, int64_t in, const LoraSpec& spec) {
  ANVIL_CHECK(spec.r >= 1, module, ": lora.r is ", spec.r, " — the adapter rank must be at least 1");
  const int64_t g = spec.qa_group;
  ANVIL_CHECK(g >= 0 && (g == 0 || in % g == 0), module, ": lora.qa_group ", g, " does not divide its in_features ",
              in, " (this rank's share under tensor parallelism) — pick a group size that divides it");
  return g > 0 ? in / g : in;
}
}  // namespace

LoraAdapter::LoraAdapter(const std::string& module, int64_t out, int64_t in, const ShardSpec& weight_shard,
                         const LoraSpec& spec)
    : A(module + ".lora_A.weight", Tensor::zeros({spec.r, adapter_cols(module, in, spec)}), ParamRole::Matrix,
        Init::KaimingUniform),
      B(module + ".lora_B.weight", Tensor::zeros({out, spec.r}), ParamRole::Matrix, Init::Zeros),
      spec_(spec),
      scaling_(spec.scaling()) {
  const int64_t g = spec.qa_group;
  for (const ShardSplit& split : weight_shard.splits) {
    ANVIL_CHECK(split.dim == 0 || split.dim == 1, module, ": a weight split on dim ", split.dim,
                " has no LoRA layout — LoRA follows a split of out (dim 0) or in (dim 1)");
    if (split.dim == 0) B.shard.add(split);  // B's rows are the weight's rows
    else A.shard.add(g > 0 ? pooled_split(split, g, module) : split);
  }
}

const Tensor& LoraAdapter::pooling_vector(const Tensor& like) const {
  if (!pool_.defined() || pool_.device() != like.device() || pool_.dtype() != like.dtype())
    pool_ = Tensor::full({spec_.qa_group, 1}, 1.0 / static_cast<double>(spec_.qa_group), like.dtype()).to(like.device());
  return pool_;
}

void LoraAdapter::apply_dropout(Tensor& u, const DropoutKey& key) const {
  const PhiloxStream rng(key.seed, stream_id((B.name + ".lora_dropout").c_str()), key.draw);
  kernels::DropoutLayout layout;
  layout.row_of = [&key](int64_t r) { return key.global_row(r); };
  const ShardSplit* split = A.shard.over(Axis::TP);  // a row-parallel A holds a slice of the columns
  layout.first_col = split ? split->runs.front().global_start : 0;
  layout.logical_cols = split ? split->full_size : u.size(1);
  kernels::dropout_inplace(u, static_cast<float>(spec_.dropout), rng, layout, A.name.c_str());
}

Tensor LoraAdapter::adapter_input(const Tensor& x2, const DropoutKey& key) const {
  const int64_t rows = x2.size(0), g = spec_.qa_group, cols = A.value.size(1);
  Tensor u = x2;
  if (g > 0) {  // x̃ [rows, in/g]: each group of g inputs averaged, as one product with a [g, 1] vector of 1/g
    u = empty_like(x2, {rows * cols, 1});
    kernels::matmul(x2.view({rows * cols, g}), false, pooling_vector(x2), false, u);
    u = u.view({rows, cols});
  }
  if (key.active && spec_.dropout > 0) {
    if (g == 0) u = x2.clone();  // never drop into the base's input
    apply_dropout(u, key);
  }
  return u;
}

void LoraAdapter::add_forward(const Tensor& x2, Tensor& y, const DropoutKey& key) const {
  const Tensor u = adapter_input(x2, key);
  Tensor h = empty_like(u, {u.size(0), spec_.r});
  kernels::matmul(u, false, A.value, true, h);
  kernels::matmul(h, false, B.value, true, y, scaling_, 1.0f);
}

void LoraAdapter::add_input_grad(const Tensor& dy2, Tensor& dx, const DropoutKey& key) const {
  const int64_t rows = dy2.size(0), g = spec_.qa_group, cols = A.value.size(1);
  Tensor dh = empty_like(dy2, {rows, spec_.r});  // dL/d(A u) = s · dy B (s applied below)
  kernels::matmul(dy2, false, B.value, false, dh);
  const bool dropping = key.active && spec_.dropout > 0;
  if (g == 0 && !dropping) return kernels::matmul(dh, false, A.value, false, dx, scaling_, 1.0f);
  Tensor du = empty_like(dy2, {rows, cols});
  kernels::matmul(dh, false, A.value, false, du, scaling_);
  if (dropping) apply_dropout(du, key);  // the same mask: inverted dropout is its own backward
  if (g == 0) return kernels::add_inplace(dx, du);
  // Pooling's backward: each group's gradient spread over its g inputs, divided by g.
  Tensor dx_groups = dx.view({rows * cols, g});
  kernels::matmul(du.view({rows * cols, 1}), false, pooling_vector(du), true, dx_groups, 1.0f, 1.0f);
}

void LoraAdapter::accumulate_grads(const Tensor& dy2, const Tensor& x2, const DropoutKey& key, Communicator* tp) {
  if (!A.trainable && !B.trainable) return;
  const Tensor u = adapter_input(x2, key);  // regenerated (mask included) rather than saved by forward
  // Adds s · op(a) @ b to `grad`; when the product is a partial sum over tp, the increment is summed
  // over it first (the accumulated gradient must not be summed again).
  auto add_grad = [&](Param& p, const Tensor& a, const Tensor& b, bool partial) {
    if (!partial) return kernels::matmul(a, true, b, false, p.grad, scaling_, 1.0f);
    Tensor increment = empty_like(p.grad, p.grad.shape());
    kernels::matmul(a, true, b, false, increment, scaling_);
    tp->all_reduce(increment);
    kernels::add_inplace(p.grad, increment);
  };
  const bool split = tp && tp->size() > 1;
  if (A.trainable) {  // dA = s · (dy B)^T u; dy B sums over out, which a column-parallel rank holds a slice of
    Tensor dh = empty_like(dy2, {dy2.size(0), spec_.r});
    kernels::matmul(dy2, false, B.value, false, dh);
    add_grad(A, dh, u, split && B.shard.over(Axis::TP));
  }
  if (B.trainable) {  // dB = s · dy^T (u A^T); u A^T sums over in, which a row-parallel rank holds a slice of
    Tensor h = empty_like(u, {u.size(0), spec_.r});
    kernels::matmul(u, false, A.value, true, h);
    add_grad(B, dy2, h, split && A.shard.over(Axis::TP));
  }
}

Tensor LoraAdapter::delta_weight() const {
  const Tensor a = master_weight(A), b = master_weight(B);
  const int64_t out = b.size(0), cols = a.size(1), g = spec_.qa_group;
  Tensor ba = empty_like(a, {out, cols}, DType::F32);
  kernels::matmul(b, false, a, false, ba, scaling_);
  if (g == 0) return ba;
  Tensor delta = empty_like(ba, {out * cols, g});
  kernels::matmul(ba.view({out * cols, 1}), false, pooling_vector(ba), true, delta);
  return delta.view({out, cols * g});
}

}  // namespace anvil
