// Activations: GELU (tanh approximation, GPT-2's "gelu_new"), SwiGLU (Llama's MLP) and the
// residual SiLU of Medusa's ResBlock.
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

// y = x + silu(pre), silu(g) = g * sigmoid(g) (Medusa's ResBlock: h + SiLU(W1 h + b1)). All same
// shape; y may alias x or pre.
void residual_silu_forward(const Tensor& x, const Tensor& pre, Tensor& y);
// dpre = dy * silu'(pre), silu'(g) = s (1 + g (1 - s)) with s = sigmoid(g); dpre may alias dy.
// (The residual's own gradient is dy itself.)
void silu_backward(const Tensor& dy, const Tensor& pre, Tensor& dpre);

}  // namespace anvil::kernels
