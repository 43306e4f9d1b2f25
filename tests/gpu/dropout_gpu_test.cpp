// kernels/dropout.h on CUDA (kernels/cuda/dropout.cu) against the CPU kernel: the mask must be the
// CPU's bit for bit (the same Philox draw per logical element), so a backward that regenerates it
// on either device, and a run that moves between devices, drop the same elements. f32 results
// are compared bitwise; bf16 ones against the CPU's f32 result rounded once to bf16, also
// bitwise. Layouts: a sequence-parallel row mapping (DropoutKey::global_row's form)
// and a column slice of a wider logical matrix (a tensor-parallel A), several p, and more
// elements than one grid pass covers.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/dropout.h"
#include "models/step_context.h"
#include "tests/support/gpu_check.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

struct DropoutCase {
  int64_t rows, cols;
  float p;
  int64_t first_col, logical_cols;
  DType dtype;
};

// The bits of a host f32 tensor.
std::vector<uint32_t> bits(const Tensor& t) {
  const Tensor h = host_f32(t).contiguous();
  std::vector<uint32_t> out(static_cast<size_t>(h.numel()));
  std::memcpy(out.data(), h.data<float>(), out.size() * sizeof(uint32_t));
  return out;
}

void check_case(const DropoutCase& c, uint32_t seed) {
  const std::string where = "rows=" + std::to_string(c.rows) + " cols=" + std::to_string(c.cols) +
                            " p=" + std::to_string(c.p) + " first_col=" + std::to_string(c.first_col) + " " +
                            dtype_label(c.dtype);
  DropoutKey key;  // rank 1 of dp, second sequence slice of sp
  key.first_sample = 3, key.first_position = 16, key.local_len = 16, key.seq_len = 64;
  kernels::DropoutLayout layout;
  layout.row_of = [&key](int64_t r) { return key.global_row(r); };
  layout.first_col = c.first_col;
  layout.logical_cols = c.logical_cols;
  const PhiloxStream rng(0x1234567890abcdefull + seed, stream_id("dropout_gpu_test"), 7 + seed);

  Tensor want = reference_input(random_tensor({c.rows, c.cols}, seed, 0.5f, 2.0f), c.dtype);  // no zeros
  Tensor got = gpu_operand(want, c.dtype);
  kernels::dropout_inplace(want, c.p, rng, layout, "want");
  kernels::dropout_inplace(got, c.p, rng, layout, "got");
  if (c.dtype == DType::BF16) want = want.to(DType::BF16);
  const std::vector<uint32_t> w = bits(want), g = bits(got);
  ASSERT_EQ(w.size(), g.size()) << where;
  int64_t mismatches = 0, dropped = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    mismatches += w[i] != g[i];
    dropped += w[i] == 0;
  }
  EXPECT_EQ(mismatches, 0) << where << ": elements that differ from the CPU's bits";
  // The mask is not trivial: about p of the elements dropped (binomial, 6 standard deviations).
  const double n = static_cast<double>(w.size()), expected = c.p * n, sd = std::sqrt(n * c.p * (1 - c.p));
  EXPECT_NEAR(static_cast<double>(dropped), expected, 6 * sd + 1) << where;
}

}  // namespace

TEST(DropoutGpu, MaskMatchesTheCpuBitForBit) {
  uint32_t seed = 1;
  for (DType dt : {DType::F32, DType::BF16})
    for (float p : {0.0f, 0.1f, 0.5f}) {
      check_case({48, 40, p, 0, 40, dt}, seed++);
      check_case({32, 24, p, 40, 96, dt}, seed++);  // a column slice of a wider logical matrix
    }
  // More elements than one pass of the grid (65536 blocks of 256 threads): the grid-stride loop.
  check_case({4160, 4096, 0.1f, 0, 4096, DType::F32}, seed++);
}

TEST(DropoutGpu, BadInputIsOneClearError) {
  Tensor x = on_gpu(random_tensor({4, 8}, 3));
  kernels::DropoutLayout layout;
  layout.row_of = [](int64_t r) { return r; };
  layout.logical_cols = 8;
  const PhiloxStream rng(1, 2, 3);
  try {
    kernels::dropout_inplace(x, 1.0f, rng, layout, "lora_A");
    FAIL() << "p = 1 was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("lora_A: dropout probability 1 is outside [0, 1)"), std::string::npos)
        << e.what();
  }
  layout.first_col = 4;
  try {
    kernels::dropout_inplace(x, 0.1f, rng, layout, "lora_A");
    FAIL() << "columns past logical_cols were accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("lie outside the logical 8"), std::string::npos) << e.what();
  }
}
