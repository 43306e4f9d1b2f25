// Fused elementwise ops and reductions: residual add, bias add/grad, scaling, norms.
#pragma once
#include <vector>

#include "core/tensor.h"

namespace anvil::kernels {

// out = a + b (same shape; out may alias a or b).
void add(const Tensor& a, const Tensor& b, Tensor& out);
// y += x (same shape).
void add_inplace(Tensor& y, const Tensor& x);
// y = alpha * x + y.
void axpy(float alpha, const Tensor& x, Tensor& y);
// x *= alpha.
void scale_inplace(Tensor& x, float alpha);
// y[r, :] += bias for every row r of y viewed as [rows, n] (bias: [n]).
void add_bias(Tensor& y, const Tensor& bias);
// dbias += sum over rows of dy viewed as [rows, n].
void bias_grad(const Tensor& dy, Tensor& dbias);
// out[j] = sum over rows of x[:, j] for x viewed as [rows, n] (assigned).
void sum_rows(const Tensor& x, Tensor& out);
// Reductions over all elements, accumulated in double.
double sum(const Tensor& x);
double sum_squares(const Tensor& x);
double max_abs(const Tensor& x);
// sum_squares over every tensor of a list (gradient norms): on CUDA all tensors reduce into one
// device buffer read back once, instead of one host round trip per tensor. Empty list: 0.
double sum_squares(const std::vector<Tensor>& xs);

}  // namespace anvil::kernels
