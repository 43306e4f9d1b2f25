// ProcessGrid at 8 ranks: coordinates follow tp-fastest, then sp, dp (ep carved out of it), pp; each
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

// ep is carved out of dp (dp_i = edp_i * ep + ep_i): every rank keeps the coordinates it has
// with ep = 1, comm(EP) holds the ep consecutive dp ranks of its expert-data replica, and the
// expert data group holds the dp x sp ranks with this rank's ep coordinate.
TEST(ProcessGrid, ExpertAxisIsCarvedOutOfDp) {
  for (GridDims dims : {GridDims{8, 1, 1, 1, 2}, GridDims{8, 1, 1, 1, 4}, GridDims{4, 2, 1, 1, 2},
                        GridDims{2, 2, 2, 1, 2}, GridDims{2, 1, 1, 4, 2}, GridDims{4, 1, 2, 1, 4}}) {
    ProcessGrid g(world(), dims);
    GridDims dense = dims;
    dense.ep = 1;
    ProcessGrid d(world(), dense);
    const int dp = g.rank(Axis::DP), tp = g.rank(Axis::TP), pp = g.rank(Axis::PP), sp = g.rank(Axis::SP);
    for (Axis axis : {Axis::DP, Axis::TP, Axis::PP, Axis::SP})
      EXPECT_EQ(g.rank(axis), d.rank(axis)) << dims.str() << " " << axis_name(axis) << ": ep moved a rank";
    EXPECT_EQ(g.world_rank(dp, tp, pp, sp), world()->rank()) << dims.str();
    const int ep = dims.ep, edp = dp / ep;
    EXPECT_EQ(g.rank(Axis::EP), dp % ep) << dims.str();
    EXPECT_EQ(g.size(Axis::EP), ep);
    const std::vector<int> experts = members(g, Axis::EP);
    ASSERT_EQ(static_cast<int>(experts.size()), ep) << dims.str();
    for (int i = 0; i < ep; ++i)
      EXPECT_EQ(experts[i], g.world_rank(edp * ep + i, tp, pp, sp)) << dims.str() << " ep member " << i;
    EXPECT_EQ(g.comm(Axis::EP).rank(), g.rank(Axis::EP));
    Communicator& c = g.expert_data_sequence_comm();
    ASSERT_EQ(c.size(), dims.dp / ep * dims.sp) << dims.str();
    EXPECT_EQ(c.rank(), edp * dims.sp + sp) << dims.str();
    Tensor mine = Tensor::full({1}, world()->rank(), DType::I32), all = Tensor::empty({c.size()}, DType::I32);
    c.all_gather(mine, all);
    for (int e = 0; e < dims.dp / ep; ++e)
      for (int s = 0; s < dims.sp; ++s)
        EXPECT_EQ(all.data<int32_t>()[e * dims.sp + s], g.world_rank(e * ep + g.rank(Axis::EP), tp, pp, s))
            << dims.str() << " expert data member " << e * dims.sp + s;
    // With ep = 1 the expert data group is the dense one, and comm(EP) this rank alone.
    EXPECT_EQ(&d.expert_data_sequence_comm(), &d.data_sequence_comm());
    EXPECT_EQ(d.comm(Axis::EP).size(), 1);
  }
}

TEST(ProcessGrid, ExpertDegreeThatDoesNotDivideDpFailsNamingBoth) {
  const std::string msg = anvil::testing::error_of([] { ProcessGrid g(world(), GridDims{8, 1, 1, 1, 3}); });
  EXPECT_NE(msg.find("parallel.ep = 3 does not divide parallel.dp = 8"), std::string::npos) << msg;
  EXPECT_NE(msg.find("pick an ep that divides dp"), std::string::npos) << msg;
  const std::string zero = anvil::testing::error_of([] { ProcessGrid g(world(), GridDims{8, 1, 1, 1, 0}); });
  EXPECT_NE(zero.find("parallel.ep = 0 must be >= 1"), std::string::npos) << zero;
}

// A dense model takes ep = 1; the error names the field, says why and how to fix it.
TEST(ProcessGrid, ExpertParallelOnADenseModelIsAClearError) {
  ModelConfig m = ModelConfig::llama();
  m.hidden_size = 96; m.num_attention_heads = 6; m.num_key_value_heads = 2; m.num_hidden_layers = 4;
  m.intermediate_size = 256; m.vocab_size = 512;
  ASSERT_EQ(model_experts(m), 0);
  EXPECT_NO_THROW(validate_layout(GridDims{4, 2, 1, 1, 1}, m));
  const std::string dense = anvil::testing::error_of([&] { validate_layout(GridDims{4, 2, 1, 1, 2}, m); });
  EXPECT_NE(dense.find("parallel.ep = 2 but the model (llama) is dense"), std::string::npos) << dense;
  EXPECT_NE(dense.find("set parallel.ep: 1"), std::string::npos) << dense;
  const std::string zero = anvil::testing::error_of([&] { validate_layout(GridDims{4, 2, 1, 1, 0}, m); });
  EXPECT_NE(zero.find("parallel.ep = 0 must be >= 1"), std::string::npos) << zero;
}

// One copy of each element reaches a checkpoint: replicated tensors have one writer per pp
// stage, a tensor split over tp one per tp rank, over ep one per ep rank, over both ep x tp.
TEST(ProcessGrid, OneWriterPerDistinctShard) {
  const GridDims dims{4, 2, 1, 1, 2};
  ProcessGrid g(world(), dims);
  ShardSpec replicated, over_tp, over_ep, over_both;
  over_tp.add(ShardSplit{Axis::TP, 1, 4, {}});
  over_ep.add(ShardSplit{Axis::EP, 0, 4, {}});
  over_both.add(ShardSplit{Axis::EP, 0, 4, {}});
  over_both.add(ShardSplit{Axis::TP, 1, 4, {}});
  auto writers = [&](const ShardSpec& s) {
    Tensor n = Tensor::full({1}, writes_first_copy(g, s) ? 1 : 0, DType::I32);
    world()->all_reduce(n, ReduceOp::Sum);
    return static_cast<int>(n.item());
  };
  EXPECT_EQ(writers(replicated), 1);
  EXPECT_EQ(writers(over_tp), dims.tp);
  EXPECT_EQ(writers(over_ep), dims.ep);
  EXPECT_EQ(writers(over_both), dims.ep * dims.tp);
  if (writes_first_copy(g, over_both)) {  // the first expert-data replica: dp ranks 0 .. ep-1
    EXPECT_LT(g.rank(Axis::DP), dims.ep);
  }
  EXPECT_EQ(writes_first_copy(g, replicated), world()->rank() == 0);
}
