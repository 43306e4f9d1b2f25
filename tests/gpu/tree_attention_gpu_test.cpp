// kernels/tree_attention on CUDA against the CPU backend on the same inputs, f32 and bf16: two
// rows of a cached prefix followed by a draft tree's nodes (every node sees the prefix and its
// ancestors), GQA, head dims 32 and 128, strided views as the KV cache hands them. Error measure
// and base tolerances: tests/support/gpu_check.h. The bf16 output is one rounding of an f32
// accumulation over bf16-exact inputs: 2 · 2^-8 leaves room for it and the accumulation order.
#include <gtest/gtest.h>

#include "eval/speculative_tree.h"
#include "kernels/tree_attention.h"
#include "tests/support/gpu_check.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

Tensor visible_of(const DraftTree& t) {
  const std::vector<uint8_t> m = t.ancestor_mask();
  return Tensor::from_vector(std::vector<int32_t>(m.begin(), m.end()), {t.size(), t.size()});
}

void check(int width, int depth, int64_t prefix, int64_t Hq, int64_t Hkv, int64_t D, DType dtype) {
  const DraftTree tree = DraftTree::complete(width, depth);
  const int64_t B = 2, T = tree.size(), Tk = prefix + T + 5;  // slots after the nodes are not read
  const Tensor q = reference_input(random_tensor({B, T, Hq, D}, 1), dtype);
  const Tensor k = reference_input(random_tensor({B, Tk, Hkv, D}, 2), dtype);
  const Tensor v = reference_input(random_tensor({B, Tk, Hkv, D}, 3), dtype);
  const Tensor vis = visible_of(tree);
  const float scale = 0.3f;
  Tensor want = Tensor::empty({B, T, Hq, D});
  kernels::tree_attention_forward(q, k, v, scale, prefix, vis, want);
  Tensor got = Tensor::empty({B, T, Hq, D}, dtype, gpu());
  kernels::tree_attention_forward(gpu_operand(q, dtype), gpu_operand(k, dtype), gpu_operand(v, dtype), scale, prefix,
                                  vis.to(gpu()), got);
  const double tol = dtype == DType::BF16 ? 2 * kBf16Rounding : kF32Tol;
  EXPECT_GPU_NEAR(got, want, tol, std::string("tree attention ") + dtype_label(dtype) + " width " +
                                      std::to_string(width) + " depth " + std::to_string(depth) + " D " +
                                      std::to_string(D));
}

TEST(TreeAttentionGpu, MatchesCpu) {
  for (DType dt : {DType::F32, DType::BF16}) {
    check(2, 3, 37, 4, 2, 32, dt);
    check(3, 2, 0, 8, 8, 128, dt);
    check(1, 4, 100, 6, 2, 64, dt);
  }
}

}  // namespace
