#include "models/mlp.h"

#include "kernels/activation.h"
#include "kernels/elementwise.h"
#include "models/family.h"

namespace anvil {

MLP::MLP(const std::string& prefix, int64_t hidden, int64_t intermediate, bool gated, bool bias, Communicator* tp)
    : down_(prefix + "." + mlp_names(gated).down, intermediate, hidden, bias, tp, Init::ResidualNormal) {
  const MlpNames& names = mlp_names(gated);
  if (gated) {
    gate_.emplace(prefix + "." + names.gate, hidden, intermediate, bias, tp);
    up_.emplace(prefix + "." + names.up, hidden, intermediate, bias, tp);
  } else {
    fc_.emplace(prefix + "." + names.fc, hidden, intermediate, bias, tp);
  }
}

size_t MLP::activation_bytes(const ActivationDims& d) const {
  const size_t hidden = down_.linear().out_features(), intermediate = down_.linear().in_features();  // local under tp
  return d.tokens * (hidden + (gated() ? 3 : 2) * intermediate) * d.act;
}

Tensor MLP::forward(const Tensor& x, Cache& c) {
  Tensor act;
  if (gated()) {
    const Tensor gate = gate_->forward(x, c.child(0));
    const Tensor up = up_->forward(x, c.child(1));
    act = empty_like(gate, gate.shape());
    kernels::swiglu_forward(gate, up, act);
    c["gate"] = gate;
    c["up"] = up;
  } else {
    const Tensor pre = fc_->forward(x, c.child(0));
    act = empty_like(pre, pre.shape());
    kernels::gelu_forward(pre, act);
    c["pre"] = pre;
  }
  return down_.forward(act, c.child(2));  // down_ saves act as its input
}

Tensor MLP::infer(const Tensor& x) {
  Tensor act;
  if (gated()) {
    const Tensor gate = gate_->infer(x);
    act = up_->infer(x);
    kernels::swiglu_forward(gate, act, act);  // written over up (elementwise, same index)
  } else {
    act = fc_->infer(x);
    kernels::gelu_forward(act, act);  // in place (y may alias x)
  }
  return down_.infer(act);
}

Tensor MLP::backward(const Tensor& dy, Cache& c) {
  Tensor dact = down_.backward(dy, c.child(2));
  if (gated()) {
    const Tensor gate = c.get("gate"), up = c.get("up");
    Tensor dgate = empty_like(gate, gate.shape());
    kernels::swiglu_backward(dact, gate, up, dgate, dact);  // dup written over dact
    c.clear_own();
    // gate and up read the same input: one input-gradient reduction for both.
    return column_parallel_backward({&*gate_, &*up_}, {dgate, dact}, {&c.child(0), &c.child(1)});
  }
  kernels::gelu_backward(dact, c.get("pre"), dact);
  c.clear_own();
  return fc_->backward(dact, c.child(0));
}

void MLP::collect_linears(std::vector<LinearWeight*>& out) {
  if (gated()) {
    gate_->collect_linears(out);
    up_->collect_linears(out);
  } else {
    fc_->collect_linears(out);
  }
  down_.collect_linears(out);
}

void MLP::collect_params(std::vector<Param*>& out) {
  if (gated()) {
    gate_->collect_params(out);
    up_->collect_params(out);
  } else {
    fc_->collect_params(out);
  }
  down_.collect_params(out);
}

}  // namespace anvil
