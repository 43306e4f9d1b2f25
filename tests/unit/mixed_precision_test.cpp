// Mixed precision without a GPU: the bookkeeping of f32 masters and bf16 values (move_params,
// refresh_value), the optimizers' master updates, checkpoints saving masters, and the
// device/dtype-following buffer helpers. bf16 tensors live fine on the host (only the CPU
// kernels are f32-only), so the wiring is checked here against plain f32 runs, bit for bit.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "core/rng.h"
#include "models/transformer.h"
#include "optim/adamw.h"
#include "optim/muon.h"
#include "trainer/checkpoint.h"

using namespace anvil;

namespace {

Tensor random_tensor(const Shape& shape, uint32_t stream) {
  Tensor t = Tensor::empty(shape);
  PhiloxStream(7, stream).fill_normal(t, 0.0f, 1.0f);
  return t;
}

// Element i of a bf16 tensor must be float_to_bf16 of element i of the f32 one (round to nearest even).
void expect_rounded_from(const Tensor& value, const Tensor& master, const std::string& what) {
  ASSERT_EQ(value.dtype(), DType::BF16) << what;
  ASSERT_EQ(master.dtype(), DType::F32) << what;
  const Tensor v = value.contiguous(), m = master.contiguous();
  const uint16_t* vb = static_cast<const uint16_t*>(v.raw_data());
  const float* mf = m.data<float>();
  for (int64_t i = 0; i < m.numel(); ++i)
    ASSERT_EQ(vb[i], float_to_bf16(mf[i])) << what << " element " << i << " (master " << mf[i] << ")";
}

void expect_bitwise_equal(const Tensor& a, const Tensor& b, const std::string& what) {
  ASSERT_EQ(a.shape(), b.shape()) << what;
  ASSERT_EQ(a.dtype(), b.dtype()) << what;
  const Tensor x = a.contiguous(), y = b.contiguous();
  EXPECT_EQ(std::memcmp(x.raw_data(), y.raw_data(), x.nbytes()), 0) << what;
}

}  // namespace

TEST(MixedPrecision, LikeHelpersFollowTheTensorTheyDeriveFrom) {
  const Tensor x = Tensor::zeros({2, 3}, DType::BF16);
  const Tensor e = empty_like(x, {4});
  EXPECT_EQ(e.dtype(), DType::BF16);
  EXPECT_EQ(e.device(), x.device());
  EXPECT_EQ(e.shape(), (Shape{4}));
  const Tensor z = zeros_like(x, {2, 2}, DType::F32);
  EXPECT_EQ(z.dtype(), DType::F32);
  for (float v : z.to_vector()) EXPECT_EQ(v, 0.0f);
  EXPECT_THROW(empty_like(Tensor(), {1}), Error);
  // host_f32: the tensor itself when it already is host f32, an exact widening of bf16 otherwise.
  const Tensor f = random_tensor({5}, 1);
  EXPECT_TRUE(host_f32(f).same_storage(f));
  const Tensor h = f.to(DType::BF16);
  const Tensor w = host_f32(h);
  EXPECT_EQ(w.dtype(), DType::F32);
  for (int64_t i = 0; i < 5; ++i) EXPECT_EQ(w.item_at({i}), h.item_at({i}));
}

TEST(MixedPrecision, MoveParamsKeepsF32MastersAndRoundsValues) {
  Param trained("w", random_tensor({3, 5}, 2), ParamRole::Matrix);
  Param frozen("f", random_tensor({4}, 3), ParamRole::Vector);
  frozen.set_trainable(false);
  const Tensor w0 = trained.value.clone(), f0 = frozen.value.clone();
  trained.grad.fill_(1.0);

  move_params({&trained, &frozen}, Device::cpu(), DType::BF16);
  ASSERT_TRUE(trained.master.defined());
  expect_bitwise_equal(trained.master, w0, "master = the f32 weights");
  expect_rounded_from(trained.value, trained.master, "trainable value");
  EXPECT_EQ(trained.grad.dtype(), DType::F32);
  for (float g : trained.grad.to_vector()) EXPECT_EQ(g, 0.0f);
  EXPECT_FALSE(frozen.master.defined());  // nothing updates a frozen param: no master
  EXPECT_FALSE(frozen.grad.defined());
  expect_rounded_from(frozen.value, f0, "frozen value");
  EXPECT_TRUE(master_weight(frozen).same_storage(frozen.value));

  // An update of the master reaches the value only through refresh_value.
  trained.master.fill_(1.00390625);  // 1 + 2^-8: a tie between two bf16 values, rounds to even (1.0)
  EXPECT_NE(trained.value.item_at({0, 0}), 1.0);
  refresh_value(trained);
  EXPECT_EQ(trained.value.item_at({0, 0}), 1.0);

  // Back to f32: the master becomes the value again, bit for bit; moving where it is allocates nothing.
  const Tensor master = trained.master;
  move_params({&trained}, Device::cpu(), DType::F32);
  EXPECT_FALSE(trained.master.defined());
  expect_bitwise_equal(trained.value, master, "value after moving back to f32");
  const Tensor before = trained.value;
  move_params({&trained}, Device::cpu(), DType::F32);
  EXPECT_TRUE(trained.value.same_storage(before));

  // Unfreezing a bf16 param gives it a master to update.
  frozen.set_trainable(true);
  ASSERT_TRUE(frozen.master.defined());
  EXPECT_EQ(frozen.master.dtype(), DType::F32);
  EXPECT_EQ(frozen.grad.dtype(), DType::F32);
}

TEST(MixedPrecision, ModelMovesItsParamsAndCountsTheirMemory) {
  ModelConfig c = ModelConfig::preset("llama");
  c.vocab_size = 32;
  c.hidden_size = 16;
  c.num_hidden_layers = 1;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.intermediate_size = 32;
  c.max_position_embeddings = 8;
  TransformerLM model(c);
  model.init_weights(3);
  EXPECT_EQ(model.compute_dtype(), DType::F32);
  const MemoryTable f32 = model.memory_table(2, 8);
  model.to(Device::cpu(), DType::BF16);
  EXPECT_EQ(model.compute_dtype(), DType::BF16);
  for (Param* p : model.params()) {
    EXPECT_EQ(p->value.dtype(), DType::BF16) << p->name;
    ASSERT_TRUE(p->master.defined()) << p->name;
    expect_rounded_from(p->value, p->master, p->name);
  }
  // The table counts masters and bf16 values (6 bytes per weight instead of 4) and bf16 activations.
  const MemoryTable bf16 = model.memory_table(2, 8);
  EXPECT_EQ(bf16.param_bytes, f32.param_bytes / 4 * 6);
  EXPECT_LT(bf16.activation_bytes, f32.activation_bytes);
  EXPECT_GT(bf16.activation_bytes, f32.activation_bytes / 2);  // statistics stay f32
}

// AdamW and Muon update the f32 master exactly as an f32 run updates its weights, and leave the
// rounded master in the bf16 value.
TEST(MixedPrecision, OptimizersUpdateTheMasterAndRoundTheValue) {
  for (const bool muon : {false, true}) {
    Param plain("w", random_tensor({6, 4}, 4), ParamRole::Matrix);
    Param mixed("w", plain.value.clone(), ParamRole::Matrix);
    move_params({&mixed}, Device::cpu(), DType::BF16);
    std::unique_ptr<Optimizer> a, b;
    if (muon) {
      MuonConfig mc;
      mc.weight_decay = 0.1;
      a = std::make_unique<Muon>(std::vector<Param*>{&plain}, mc);
      b = std::make_unique<Muon>(std::vector<Param*>{&mixed}, mc);
    } else {
      AdamWConfig ac;
      a = std::make_unique<AdamW>(std::vector<Param*>{&plain}, ac);
      b = std::make_unique<AdamW>(std::vector<Param*>{&mixed}, ac);
    }
    for (int step = 0; step < 3; ++step) {
      const Tensor g = random_tensor({6, 4}, 10 + step);
      plain.grad.copy_(g);
      mixed.grad.copy_(g);
      a->step(0.05);
      b->step(0.05);
      const std::string what = std::string(muon ? "muon" : "adamw") + " step " + std::to_string(step);
      expect_bitwise_equal(mixed.master, plain.value, what + ": master");
      expect_rounded_from(mixed.value, mixed.master, what + ": value");
    }
    for (const NamedTensor& t : b->state()) EXPECT_EQ(t.tensor.dtype(), DType::F32) << t.name;
  }
}

TEST(MixedPrecision, CheckpointsSaveMastersAndLoadingRoundsTheValues) {
  const std::string root = (std::filesystem::path(::testing::TempDir()) / "anvil_mixed_checkpoint").string();
  std::filesystem::remove_all(root);
  Param saved("w", random_tensor({3, 4}, 5), ParamRole::Matrix);
  const Tensor weights = saved.value.clone();
  move_params({&saved}, Device::cpu(), DType::BF16);
  CheckpointMeta meta;
  meta.step = 1;
  const std::string dir = save_checkpoint(root, meta, {&saved}, nullptr, 0);

  Param f32("w", Tensor::zeros({3, 4}), ParamRole::Matrix);  // an f32 run reads the masters
  load_checkpoint(dir, {&f32}, nullptr);
  expect_bitwise_equal(f32.value, weights, "f32 load");

  Param bf16("w", Tensor::zeros({3, 4}), ParamRole::Matrix);  // a bf16 run: masters in, values rounded
  move_params({&bf16}, Device::cpu(), DType::BF16);
  load_checkpoint(dir, {&bf16}, nullptr);
  expect_bitwise_equal(bf16.master, weights, "bf16 load: master");
  expect_rounded_from(bf16.value, bf16.master, "bf16 load: value");
  std::filesystem::remove_all(root);
}
