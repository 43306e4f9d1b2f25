#include "models/param.h"

namespace anvil {

const char* param_role_name(ParamRole role) {
  switch (role) {
    case ParamRole::Matrix: return "matrix";
    case ParamRole::Vector: return "vector";
    case ParamRole::Embedding: return "embedding";
  }
  return "?";
}

Param::Param(std::string n, Tensor v, ParamRole r) : name(std::move(n)), value(std::move(v)), role(r) {
  if (value.defined()) grad = Tensor::zeros(value.shape(), value.dtype(), value.device());
}

void Param::set_trainable(bool on) {
  trainable = on;
  if (!on) grad = Tensor();
  else if (!grad.defined()) grad = Tensor::zeros(value.shape(), value.dtype(), value.device());
}

void Param::zero_grad() {
  if (grad.defined()) grad.zero_();
}

}  // namespace anvil
