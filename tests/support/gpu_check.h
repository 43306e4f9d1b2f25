// Helpers for the GPU tests (tests/gpu): every CUDA op is run on the same inputs as the CPU
// reference backend and compared with dtype-aware tolerances.
//
// The error measure everywhere is the max-norm relative error
//     err(got, want) = max_i |got_i - want_i| / max_i |want_i|   (||got - want||_inf / ||want||_inf)
// with `want` the CPU result in f32 (tests/support/reference.h max_rel_diff).
//
// f32 ops: 1e-5. The CPU and GPU sum in different orders (blocked reductions, cuBLASLt split-K),
// which moves a result by a few f32 ulps times the depth of the sum; 1e-5 leaves room for that
// and still fails on TF32 (10 mantissa bits, ~5e-4) or any real indexing error.
//
// bf16 ops: the inputs are rounded to bf16 first and the CPU reference runs in f32 on the
// rounded values, so both sides see identical inputs. A bf16 output then differs from the
// f32 reference by its own rounding, at most 2^-8 of each element (bf16 keeps 8 significant
// bits; round to nearest is within half an ulp, 2^-8 relative), plus the f32 accumulation
// difference above. Ops that round intermediates to bf16 (flash attention's probabilities)
// get one more 2^-8 per rounding on the path; each test states its sum.
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "core/cuda_device.h"
#include "core/tensor.h"
#include "tests/support/reference.h"

namespace anvil::testing {

constexpr double kF32Tol = 1e-5;
constexpr double kBf16Rounding = 1.0 / 256;  // 2^-8: the relative error of one bf16 rounding

inline Device gpu() { return Device::cuda(0); }

// A copy on cuda:0 (of the same dtype).
inline Tensor on_gpu(const Tensor& t) { return t.to(gpu()); }
// An f32 CPU tensor rounded to bf16 and widened back: the exact values a bf16 kernel sees.
inline Tensor bf16_exact(const Tensor& t) { return t.to(DType::BF16).to(DType::F32); }
// The operand a GPU kernel of `dtype` takes: `t` (f32, CPU, already bf16-exact for bf16) on
// cuda:0 in `dtype`.
inline Tensor gpu_operand(const Tensor& t, DType dtype) { return t.to(dtype).to(gpu()); }

// The CPU reference input for dtype: as is for f32, rounded for bf16.
inline Tensor reference_input(const Tensor& t, DType dtype) { return dtype == DType::BF16 ? bf16_exact(t) : t; }

// err(got on the GPU, want on the CPU) as defined above.
inline double gpu_error(const Tensor& got, const Tensor& want) { return max_rel_diff(host_f32(got), want); }

// Asserts err(got, want) < tol, naming the quantity.
#define EXPECT_GPU_NEAR(got, want, tol, what)                                                         \
  do {                                                                                               \
    const double anvil_gpu_err_ = ::anvil::testing::gpu_error((got), (want));                       \
    EXPECT_LT(anvil_gpu_err_, (tol)) << (what) << ": max-norm relative error " << anvil_gpu_err_ \
                                     << " against the CPU reference, tolerance " << (tol);        \
  } while (0)

inline const char* dtype_label(DType dt) { return dt == DType::BF16 ? "bf16" : "f32"; }

}  // namespace anvil::testing
