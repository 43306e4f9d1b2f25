// Activations: GELU (tanh approximation, GPT-2's "gelu_new") and SwiGLU (Llama's MLP).
#pragma once
#include "core/tensor.h"

namespace anvil::kernels {

// y = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); y may alias x.
void gelu_forward(const Tensor& x, Tensor& y);
// dx = dy * gelu'(x); dx may alias dy.
void gelu_backward(const Tensor& dy, const Tensor& x, Tensor& dx);

// y = silu(gate) * up, silu(g) = g * sigmoid(g). All same shape.
void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& y);
// dgate, dup assigned; either may alias dy.
void swiglu_backward(const Tensor& dy, const Tensor& gate, const Tensor& up, Tensor& dgate, Tensor& dup);

}  // namespace anvil::kernels
