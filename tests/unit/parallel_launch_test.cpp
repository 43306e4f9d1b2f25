// The launch checks every rank runs before any collective: degrees vs world size,
// and the axes not built yet.
#include <gtest/gtest.h>

#include "tests/support/reference.h"
#include "trainer/trainer.h"

using namespace anvil;
using anvil::testing::error_of;

namespace {
ParallelSection degrees(int64_t dp, int64_t tp = 1, int64_t pp = 1, int64_t sp = 1) {
  ParallelSection p;
  p.dp = dp;
  p.tp = tp;
  p.pp = pp;
  p.sp = sp;
  return p;
}
bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }
}  // namespace

TEST(ParallelLaunch, DegreesMustMultiplyToTheWorldSize) {
  EXPECT_NO_THROW(check_parallel_launch(degrees(1), 1));
  EXPECT_NO_THROW(check_parallel_launch(degrees(4), 4));
  const std::string three = error_of([] { check_parallel_launch(degrees(2), 3); });
  EXPECT_TRUE(has(three, "dp*tp*pp*sp = 2*1*1*1 = 2 but the job has 3 processes")) << three;
  EXPECT_TRUE(has(three, "mpirun -np 2")) << three;
  const std::string alone = error_of([] { check_parallel_launch(degrees(2), 1); });
  EXPECT_TRUE(has(alone, "runs alone (world size 1)")) << alone;
  EXPECT_TRUE(has(alone, "mpirun -np 2")) << alone;
}

TEST(ParallelLaunch, EveryAxisIsAcceptedWhenTheDegreesMatchTheJob) {
  for (const ParallelSection& p : {degrees(1, 2), degrees(1, 1, 2), degrees(2, 1, 1, 2), degrees(2, 2, 2, 1)})
    EXPECT_EQ(error_of([&] { check_parallel_launch(p, static_cast<int>(p.world_size())); }), "(no error)");
}
