// Checkpoints hold integer tensors (a quantized weight's packed values, its zero points)
// exactly, in their own HDF5 type, next to f32 weights; checksums and load checks cover them.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "core/param.h"
#include "tests/support/reference.h"
#include "trainer/checkpoint.h"

using namespace anvil;

namespace {
template <typename T>
Tensor from_values(const std::vector<T>& v, DType dtype) {
  Tensor t = Tensor::empty({static_cast<int64_t>(v.size())}, dtype);
  std::memcpy(t.raw_data(), v.data(), v.size() * sizeof(T));
  return t;
}

void expect_same_bytes(const Tensor& a, const Tensor& b, const std::string& what) {
  ASSERT_EQ(a.dtype(), b.dtype()) << what;
  ASSERT_EQ(a.shape(), b.shape()) << what;
  EXPECT_EQ(std::memcmp(a.contiguous().raw_data(), b.contiguous().raw_data(), a.nbytes()), 0) << what;
}
}  // namespace

TEST(CheckpointDtypes, IntegerTensorsRoundTripExactly) {
  const std::string root = (std::filesystem::path(::testing::TempDir()) / "anvil_checkpoint_dtypes").string();
  std::filesystem::remove_all(root);
  // Extremes of each type, and an i32 beyond f32's 24-bit mantissa (a float path would round it).
  const Tensor i32 = from_values<int32_t>({2147483647, -2147483647 - 1, 16777217, -7, 0, 1}, DType::I32).view({2, 3});
  const Tensor u8 = from_values<uint8_t>({0, 1, 127, 128, 255}, DType::U8);
  const Tensor i8 = from_values<int8_t>({-128, -1, 0, 127}, DType::I8);
  const Tensor f32 = anvil::testing::random_tensor({3, 2}, 4);
  Param p_i32("layer.qweight", i32.clone(), ParamRole::Matrix, Init::Keep);
  Param p_u8("layer.qzeros", u8.clone(), ParamRole::Vector, Init::Keep);
  Param p_i8("layer.qint8", i8.clone(), ParamRole::Vector, Init::Keep);
  Param p_f32("layer.scales", f32.clone(), ParamRole::Vector);
  CheckpointMeta meta;
  meta.step = 3;
  save_checkpoint(root, meta, {&p_i32, &p_u8, &p_i8, &p_f32}, nullptr, 0);
  const std::string dir = latest_checkpoint(root);  // verifies every tensor's checksum
  ASSERT_FALSE(dir.empty());

  Param l_i32("layer.qweight", Tensor::zeros({2, 3}, DType::I32), ParamRole::Matrix, Init::Keep);
  Param l_u8("layer.qzeros", Tensor::zeros({5}, DType::U8), ParamRole::Vector, Init::Keep);
  Param l_i8("layer.qint8", Tensor::zeros({4}, DType::I8), ParamRole::Vector, Init::Keep);
  Param l_f32("layer.scales", Tensor::zeros({3, 2}), ParamRole::Vector);
  load_checkpoint(dir, {&l_i32, &l_u8, &l_i8, &l_f32}, nullptr);
  expect_same_bytes(l_i32.value, i32, "i32");
  expect_same_bytes(l_u8.value, u8, "u8");
  expect_same_bytes(l_i8.value, i8, "i8");
  expect_same_bytes(l_f32.value, f32, "f32");

  // A float param where the file holds integers (or the reverse) is refused, naming the tensor.
  Param wrong("layer.qzeros", Tensor::zeros({5}), ParamRole::Vector);
  const std::string err = anvil::testing::error_of([&] { load_checkpoint(dir, {&wrong}, nullptr); });
  EXPECT_NE(err.find("layer.qzeros"), std::string::npos) << err;
  EXPECT_NE(err.find("not floating point"), std::string::npos) << err;
  std::filesystem::remove_all(root);
}
