// Layer-skip routing on CUDA against the CPU backend: kernels/route_rows (gather with padding,
// scatter-add, row dots) in f32 and bf16, and a MindSkip-routed model with mixed decisions
// (forward, backward into the router weights, KV-cached decoding of both units) in f32.
#include <gtest/gtest.h>

#include <vector>

#include "kernels/route_rows.h"
#include "models/layer_router.h"
#include "models/transformer.h"
#include "tests/support/gpu_check.h"
#include "tests/support/small_models.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

class RouteRowsGpu : public ::testing::TestWithParam<DType> {};

TEST_P(RouteRowsGpu, GatherScatterAndRowDotMatchCpu) {
  const DType dt = GetParam();
  const int64_t N = 37, C = 72;
  const std::vector<int32_t> idx = {3, 0, -1, 36, 17, -1, 5, 20, 21};  // distinct rows and padding
  const Tensor index = Tensor::from_vector(idx, {static_cast<int64_t>(idx.size())});
  const int64_t M = index.numel();
  const Tensor full = reference_input(random_tensor({N, C}, 1), dt);
  Tensor out = Tensor::empty({M, C});
  kernels::gather_rows(full, index, out);
  Tensor outg = Tensor::empty({M, C}, dt, gpu());
  kernels::gather_rows(gpu_operand(full, dt), on_gpu(index), outg);
  EXPECT_EQ(gpu_error(outg, out), 0.0) << "gather is a copy";

  const Tensor compact = reference_input(random_tensor({M, C}, 2), dt);
  Tensor target = full.clone();
  kernels::scatter_add_rows(compact, index, target);
  Tensor targetg = gpu_operand(full, dt);
  kernels::scatter_add_rows(gpu_operand(compact, dt), on_gpu(index), targetg);
  EXPECT_GPU_NEAR(targetg, target, dt == DType::BF16 ? kBf16Rounding : kF32Tol, "scatter_add_rows");

  Tensor dots = Tensor::empty({M});
  kernels::row_dot(out, compact, dots);
  Tensor dotsg = Tensor::empty({M}, DType::F32, gpu());
  kernels::row_dot(outg, gpu_operand(compact, dt), dotsg);
  EXPECT_GPU_NEAR(dotsg, dots, kF32Tol, "row_dot");
}

INSTANTIATE_TEST_SUITE_P(Dtypes, RouteRowsGpu, ::testing::Values(DType::F32, DType::BF16),
                         [](const auto& info) { return std::string(dtype_label(info.param)); });

std::unique_ptr<TransformerLM> routed_model(const RouterSpec& rs) {
  auto m = std::make_unique<TransformerLM>(spec_llama(3), ModelLayout{}, &rs);
  m->init_weights(7);
  randomize_params(m->params());
  uint32_t stream = 40;
  for (Param* p : m->router_params()) p->value.copy_(random_tensor(p->value.shape(), stream++, -4.0f, 4.0f));
  return m;
}

TEST(RoutedModelGpu, TrainingAndCachedDecodingMatchCpu) {
  for (SkipUnit unit : {SkipUnit::Sequence, SkipUnit::Token}) {
    RouterSpec rs;
    rs.unit = unit;
    rs.layers = {0, 1};
    auto cpu = routed_model(rs), gpu_model = routed_model(rs);
    gpu_model->to(gpu(), DType::F32);
    const Tensor ids = random_ids({3, 9}, 48, 4);
    Cache cc, gc;
    cc.set_context(std::make_shared<StepContext>());
    gc.set_context(std::make_shared<StepContext>());
    const Tensor want = cpu->forward(ids, cc), got = gpu_model->forward(on_gpu(ids), gc);
    EXPECT_GPU_NEAR(got, want, 1e-4, std::string("logits, ") + skip_unit_name(unit));
    const Tensor dlogits = random_tensor(want.shape(), 5);
    cpu->backward(dlogits, cc);
    gpu_model->backward(on_gpu(dlogits), gc);
    for (size_t i = 0; i < 2; ++i)
      EXPECT_GPU_NEAR(gpu_model->router_params()[i]->grad, cpu->router_params()[i]->grad, 1e-4, "router grad");
    const RoutedRows rows = cpu->routed_rows();
    EXPECT_LT(rows.attention_run, rows.attention_total) << "the routers skip nothing";

    KVCache kv(cpu->config(), 3, 12), kvg(cpu->config(), 3, 12, gpu(), DType::F32);
    const Tensor prompt = ids.slice(1, 0, 6).contiguous();
    EXPECT_GPU_NEAR(gpu_model->forward_cached(on_gpu(prompt), kvg), cpu->forward_cached(prompt, kv), 1e-4, "prefill");
    for (int64_t t = 6; t < 9; ++t) {
      const Tensor step = ids.slice(1, t, t + 1).contiguous();
      EXPECT_GPU_NEAR(gpu_model->forward_cached(on_gpu(step), kvg), cpu->forward_cached(step, kv), 1e-4, "decode step");
    }
  }
}

}  // namespace
