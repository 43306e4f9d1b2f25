// ProcessGrid at 8 ranks: coordinates follow tp-fastest, then sp, dp, pp; each
// axis communicator holds exactly the ranks that differ only along that axis;
// bad layouts fail on every rank with both numbers named.
#include <gtest/gtest.h>

#include "models/layout_checks.h"
#include "parallel/grid.h"
#include "tests/support/mpi_world.h"
#include "tests/support/reference.h"

using namespace anvil;
using anvil::testing::world;

namespace {

// The world ranks in `axis`'s communicator, gathered over that communicator.
std::vector<int> members(const ProcessGrid& g, Axis axis) {
  Communicator& c = g.comm(axis);
  Tensor mine = Tensor::full({1}, g.world().rank(), DType::I32), all = Tensor::empty({c.size()}, DType::I32);
  c.all_gather(mine, all);
  return std::vector<int>(all.data<int32_t>(), all.data<int32_t>() + c.size());
}
}  // namespace

TEST(ProcessGrid, CoordinatesAndSubCommunicators) {
  for (GridDims dims : {GridDims{2, 2, 2, 1}, GridDims{2, 2, 1, 2}, GridDims{1, 8, 1, 1}, GridDims{2, 1, 4, 1}}) {
    ProcessGrid g(world(), dims);
    const int dp = g.rank(Axis::DP), tp = g.rank(Axis::TP), pp = g.rank(Axis::PP), sp = g.rank(Axis::SP);
    EXPECT_EQ(g.world_rank(dp, tp, pp, sp), world()->rank()) << dims.str();
    EXPECT_EQ(world()->rank() % dims.tp, tp) << "tp varies fastest";
    for (Axis axis : {Axis::DP, Axis::TP, Axis::PP, Axis::SP}) {
      const std::vector<int> got = members(g, axis);
      ASSERT_EQ(static_cast<int>(got.size()), g.size(axis)) << dims.str() << " " << axis_name(axis);
      for (int i = 0; i < g.size(axis); ++i) {
        const int expect = g.world_rank(axis == Axis::DP ? i : dp, axis == Axis::TP ? i : tp,
                                        axis == Axis::PP ? i : pp, axis == Axis::SP ? i : sp);
        EXPECT_EQ(got[i], expect) << dims.str() << " " << axis_name(axis) << " member " << i;
      }
      EXPECT_EQ(g.comm(axis).rank(), g.rank(axis));
    }
  }
}

TEST(ProcessGrid, WrongProductFailsOnEveryRankNamingBothNumbers) {
  try {
    ProcessGrid g(world(), GridDims{1, 2, 1, 1});
    FAIL() << "accepted tp=2 on 8 ranks";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("= 2"), std::string::npos) << msg;
    EXPECT_NE(msg.find("8 processes"), std::string::npos) << msg;
  }
}

TEST(ProcessGrid, LayoutChecksNameDegreeAndField) {
  ModelConfig m = ModelConfig::llama();
  m.hidden_size = 96; m.num_attention_heads = 6; m.num_key_value_heads = 2; m.num_hidden_layers = 4;
  m.intermediate_size = 256; m.vocab_size = 512;
  EXPECT_NO_THROW(validate_layout(GridDims{2, 2, 2, 1}, m));
  try {
    validate_layout(GridDims{1, 4, 1, 1}, m);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("parallel.tp = 4"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("num_attention_heads = 6"), std::string::npos) << e.what();
  }
  EXPECT_THROW(validate_layout(GridDims{1, 1, 8, 1}, m), Error);  // 8 stages, 4 layers
  try {
    validate_layout(GridDims{1, 1, 3, 1}, m);  // stages own equal layer ranges: 3 does not divide 4
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("parallel.pp = 3 does not divide num_hidden_layers = 4"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(validate_layout(GridDims{1, 2, 1, 2}, m), Error);  // sp*tp = 4 > 2 KV heads
}

// The dp x sp communicator (gradients and token counts under sequence parallelism) holds the
// ranks sharing tp and pp, ordered dp_i * sp + sp_i; with sp = 1 it is the dp group.
TEST(ProcessGrid, DataSequenceCommunicatorSpansDpTimesSp) {
  for (GridDims dims : {GridDims{2, 2, 1, 2}, GridDims{1, 2, 2, 2}, GridDims{2, 1, 2, 2}, GridDims{4, 1, 1, 2},
                        GridDims{2, 2, 2, 1}, GridDims{1, 1, 1, 8}}) {
    ProcessGrid g(world(), dims);
    Communicator& c = g.data_sequence_comm();
    ASSERT_EQ(c.size(), dims.dp * dims.sp) << dims.str();
    EXPECT_EQ(c.rank(), g.rank(Axis::DP) * dims.sp + g.rank(Axis::SP)) << dims.str();
    Tensor mine = Tensor::full({1}, g.world().rank(), DType::I32), all = Tensor::empty({c.size()}, DType::I32);
    c.all_gather(mine, all);
    for (int d = 0; d < dims.dp; ++d)
      for (int s = 0; s < dims.sp; ++s)
        EXPECT_EQ(all.data<int32_t>()[d * dims.sp + s], g.world_rank(d, g.rank(Axis::TP), g.rank(Axis::PP), s))
            << dims.str() << " member " << d * dims.sp + s;
  }
}

// Ulysses splits whole KV heads over sp: the error states the limit (num_key_value_heads / tp)
// and lists the degrees that work.
TEST(ProcessGrid, SequenceParallelHeadLimitIsExplained) {
  ModelConfig m = ModelConfig::llama();
  m.hidden_size = 128; m.num_attention_heads = 8; m.num_key_value_heads = 4; m.num_hidden_layers = 2;
  m.intermediate_size = 256; m.vocab_size = 512;
  EXPECT_NO_THROW(validate_layout(GridDims{2, 2, 1, 2}, m));
  EXPECT_NO_THROW(validate_layout(GridDims{2, 1, 1, 4}, m));
  const std::string exceeds = anvil::testing::error_of([&] { validate_layout(GridDims{1, 1, 1, 8}, m); });
  EXPECT_NE(exceeds.find("parallel.sp = 8 exceeds the 4 KV heads of each tp rank"), std::string::npos) << exceeds;
  EXPECT_NE(exceeds.find("sp must divide num_key_value_heads / tp = 4 (at most 4)"), std::string::npos) << exceeds;
  EXPECT_NE(exceeds.find("Use sp in {1, 2, 4}"), std::string::npos) << exceeds;
  const std::string with_tp = anvil::testing::error_of([&] { validate_layout(GridDims{1, 2, 1, 4}, m); });
  EXPECT_NE(with_tp.find("parallel.sp = 4 exceeds the 2 KV heads of each tp rank (num_key_value_heads = 4 over tp = 2)"),
            std::string::npos) << with_tp;
  EXPECT_NE(with_tp.find("Use sp in {1, 2}"), std::string::npos) << with_tp;
  EXPECT_NE(with_tp.find("or lower tp"), std::string::npos) << with_tp;
  m.num_attention_heads = 12;
  m.num_key_value_heads = 6;
  const std::string uneven = anvil::testing::error_of([&] { validate_layout(GridDims{2, 1, 1, 4}, m); });
  EXPECT_NE(uneven.find("parallel.sp = 4 does not divide the 6 KV heads"), std::string::npos) << uneven;
  EXPECT_NE(uneven.find("Use sp in {1, 2, 3, 6}"), std::string::npos) << uneven;
}
