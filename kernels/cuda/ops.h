// The CUDA backend's entry points: the same signatures as the device-agnostic ones in
// kernels/*.h, which forward here when their first tensor is on a CUDA device
// (ANVIL_DISPATCH_CUDA in kernels/backend.h). Compiled only with nvcc present.
//
// Dtypes on CUDA (mixed precision, DESIGN.md): activations and parameter values are f32 or
// bf16 (one dtype per call); parameter gradients (dweight, dbias, dtable) are always f32 and
// accumulate; saved statistics (mean, rstd, lse, losses) are f32; arithmetic is f32.
// matmul: a and b share a dtype (f32 or bf16), c is f32 or bf16, accumulation f32.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "kernels/attention.h"  // AttentionMask
#include "kernels/cuda/gemm.h"  // matmul_bias, matmul_bias_gelu (cuBLASLt epilogues)
#include "kernels/distill_loss.h"  // DistillArgs
#include "kernels/dropout.h"       // DropoutLayout
#include "kernels/newton_schulz.h"
#include "kernels/optim_kernels.h"
#include "kernels/quant.h"  // QuantizedWeight

namespace anvil::kernels::cuda {

// activation.h
void gelu_forward(const Tensor& x, Tensor& y);
void gelu_backward(const Tensor& dy, const Tensor& x, Tensor& dx);
void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& y);
void swiglu_backward(const Tensor& dy, const Tensor& gate, const Tensor& up, Tensor& dgate, Tensor& dup);
void residual_silu_forward(const Tensor& x, const Tensor& pre, Tensor& y);
void silu_backward(const Tensor& dy, const Tensor& pre, Tensor& dpre);

// attention.h (cuDNN frontend SDPA where the shape allows, else the fallback kernel)
void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, float scale, int64_t q_offset, Tensor& out,
                       Tensor& lse, const AttentionMask& mask);
void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, float scale, int64_t q_offset, Tensor& dq, Tensor& dk, Tensor& dv,
                        const AttentionMask& mask);

// tree_attention.h
void tree_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, float scale, int64_t prefix,
                            const Tensor& visible, Tensor& out);

// elementwise.h
void add(const Tensor& a, const Tensor& b, Tensor& out);
void add_inplace(Tensor& y, const Tensor& x);
void axpy(float alpha, const Tensor& x, Tensor& y);
void scale_inplace(Tensor& x, float alpha);
void add_bias(Tensor& y, const Tensor& bias);
void bias_grad(const Tensor& dy, Tensor& dbias);
void sum_rows(const Tensor& x, Tensor& out);
double sum(const Tensor& x);
double sum_squares(const Tensor& x);
double max_abs(const Tensor& x);
double sum_squares(const std::vector<Tensor>& xs);

// distill_loss.h (student and teacher f32 or bf16, each its own; thresholds and statistics f32)
void distill_filter_threshold(const Tensor& logits, float temperature, int64_t top_k, double top_p,
                              Tensor& threshold);
void distill_forward(Tensor& student, const Tensor& teacher, const Tensor& targets, const DistillArgs& args,
                     Tensor& losses, Tensor& acceptance, bool write_grad);
void distill_shard_stats(const Tensor& student, const Tensor& teacher, const DistillArgs& args, Tensor& stats);
void distill_shard_terms(const Tensor& student, const Tensor& teacher, const Tensor& targets,
                         const DistillArgs& args, const Tensor& norms, Tensor& terms);
void distill_shard_grad(Tensor& student, const Tensor& teacher, const Tensor& targets, const DistillArgs& args,
                        const Tensor& norms, const Tensor& qg);

// route_rows.h
void gather_rows(const Tensor& full, const Tensor& index, Tensor& out);
void scatter_add_rows(const Tensor& compact, const Tensor& index, Tensor& full);
void row_dot(const Tensor& a, const Tensor& b, Tensor& out);

// embedding.h
void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out);
void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable);
void embedding_shard_forward(const Tensor& ids, const Tensor& table_shard, int64_t vocab_start, Tensor& out);
void embedding_shard_backward(const Tensor& ids, const Tensor& dout, int64_t vocab_start, Tensor& dtable_shard);

// loss.h (logits f32 or bf16; losses, lse and the shard statistics f32)
int64_t cross_entropy_forward(const Tensor& logits, const Tensor& targets, int ignore_index, Tensor& losses,
                              Tensor& lse);
void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, int ignore_index,
                            float grad_scale, Tensor& dlogits);
void cross_entropy_shard_stats(const Tensor& logits, const Tensor& targets, int64_t vocab_start, int ignore_index,
                               Tensor& row_max, Tensor& sum_exp, Tensor& target_logit);
void cross_entropy_shard_backward(const Tensor& logits, const Tensor& targets, int64_t vocab_start, const Tensor& lse,
                                  int ignore_index, float grad_scale, Tensor& dlogits);

// matmul.h (cuBLASLt)
void matmul(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, float alpha, float beta);

// dropout.h (x f32 or bf16, in place)
void dropout_inplace(Tensor& x, float p, const PhiloxStream& rng, const DropoutLayout& layout, const char* what);

// muon_kernels.h, newton_schulz.h
void muon_momentum(const Tensor& grad, Tensor& buffer, Tensor& update, float beta, bool nesterov, bool ema);
void newton_schulz(const Tensor& u, Tensor& out, const NewtonSchulzConfig& cfg);

// norm.h
void layernorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps, Tensor& y, Tensor& mean,
                       Tensor& rstd);
void layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& mean,
                        const Tensor& rstd, Tensor& dx, Tensor& dweight, Tensor& dbias);
void rmsnorm_forward(const Tensor& x, const Tensor& weight, float eps, Tensor& y, Tensor& rstd);
void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& rstd, Tensor& dx,
                      Tensor& dweight);

// optim_kernels.h (param, grad, states f32; low_precision: the bf16 compute copy, or undefined)
void adamw_update(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const AdamWStep& s,
                  Tensor& low_precision);

// quant.h (the weight's tensors on the device; activations f32 or bf16, accumulation f32)
void dequantize_rows(const QuantizedWeight& w, int64_t row_begin, int64_t row_end, Tensor& out);
void quant_matmul(const Tensor& x, const QuantizedWeight& w, Tensor& y, bool accumulate);
void quant_matmul_input_grad(const Tensor& dy, const QuantizedWeight& w, Tensor& dx, bool accumulate);
void permute_columns(const Tensor& x, const Tensor& perm, Tensor& out);
void unpermute_add_columns(const Tensor& dp, const Tensor& perm, Tensor& dx);

// rope.h (cos/sin tables f32 on the same device)
void rope_forward(Tensor& x, const Tensor& cos, const Tensor& sin, int64_t start_pos);
void rope_backward(Tensor& dx, const Tensor& cos, const Tensor& sin, int64_t start_pos);
void rope_forward(Tensor& x, const Tensor& cos, const Tensor& sin, const Tensor& positions);
void rope_backward(Tensor& dx, const Tensor& cos, const Tensor& sin, const Tensor& positions);

}  // namespace anvil::kernels::cuda
