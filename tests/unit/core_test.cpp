// core/: dtype conversions against independent references, tensor views,
// the allocator's counters and Philox known-answer vectors.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/rng.h"
#include "core/tensor.h"

using namespace anvil;

namespace {
// Naive bf16 rounding: pick the nearer of the two bf16 neighbours, ties to even.
uint16_t bf16_reference(float f) {
  if (std::isnan(f)) return 0x7fc0;
  const uint32_t u = float_bits(f);
  const uint16_t down = static_cast<uint16_t>(u >> 16);
  const uint16_t up = static_cast<uint16_t>(down + 1);
  const double lo = bf16_to_float(down);
  // Past the largest finite bf16 the next step up is 2^128 (IEEE overflow rounding).
  double hi = bf16_to_float(up);
  if (std::isinf(hi)) hi = std::copysign(std::ldexp(1.0, 128), hi);
  const double x = f;
  if ((u & 0xffff) == 0) return down;
  const double dlo = std::fabs(x - lo), dhi = std::fabs(hi - x);
  if (dlo < dhi) return down;
  if (dhi < dlo) return up;
  return (down & 1) ? up : down;
}
}  // namespace

TEST(DType, Bf16RoundsToNearestEven) {
  PhiloxStream rng(7, 1);
  for (uint64_t i = 0; i < 200000; ++i) {
    float f = bits_float(rng.u32(i));
    if (std::isnan(f) || std::isinf(f)) continue;
    if ((float_bits(f) & 0x7f800000u) == 0x7f800000u) continue;
    ASSERT_EQ(float_to_bf16(f), bf16_reference(f)) << "f=" << f << " bits=" << std::hex << float_bits(f);
  }
  // Exact ties: 1 + 2^-8 lies halfway between bf16 1.0 and 1.0078125; even is 1.0.
  EXPECT_EQ(float_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  EXPECT_EQ(float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::infinity()), 0x7f80);
}

TEST(DType, F16MatchesCompilerConversion) {
  PhiloxStream rng(7, 2);
  for (uint64_t i = 0; i < 400000; ++i) {
    // Mix wide-range bit patterns with values near the f16 range.
    float f = (i % 2) ? bits_float(rng.u32(i)) : (rng.uniform(i) - 0.5f) * std::ldexp(1.0f, int(i % 40) - 26);
    if (std::isnan(f)) continue;
    _Float16 h = static_cast<_Float16>(f);
    uint16_t expected;
    std::memcpy(&expected, &h, 2);
    ASSERT_EQ(float_to_f16(f), expected) << "f=" << f;
  }
}

TEST(DType, F16RoundTripsEveryHalf) {
  for (uint32_t bits = 0; bits < 65536; ++bits) {
    const uint16_t h = static_cast<uint16_t>(bits);
    const float f = f16_to_float(h);
    _Float16 ref;
    std::memcpy(&ref, &h, 2);
    if (std::isnan(f)) { ASSERT_TRUE(std::isnan(static_cast<float>(ref))); continue; }
    ASSERT_EQ(f, static_cast<float>(ref)) << std::hex << bits;
    ASSERT_EQ(float_to_f16(f), h) << std::hex << bits;
  }
}

TEST(Tensor, ViewsShareStorageAndIndexCorrectly) {
  Tensor t = Tensor::empty({2, 3, 4});
  float* p = t.data<float>();
  for (int i = 0; i < 24; ++i) p[i] = static_cast<float>(i);
  Tensor tr = t.transpose(0, 2);  // [4, 3, 2]
  EXPECT_FALSE(tr.is_contiguous());
  EXPECT_EQ(tr.item_at({3, 1, 1}), 12 + 4 + 3);
  Tensor s = t.slice(1, 1, 3);  // [2, 2, 4]
  EXPECT_EQ(s.item_at({1, 0, 2}), 12 + 4 + 2);
  Tensor sel = t.select(0, 1);  // [3, 4]
  EXPECT_EQ(sel.item_at({2, 3}), 23);
  EXPECT_TRUE(sel.same_storage(t));
  Tensor c = tr.contiguous();
  EXPECT_TRUE(c.is_contiguous());
  EXPECT_FALSE(c.same_storage(t));
  for (int a = 0; a < 4; ++a)
    for (int b = 0; b < 3; ++b)
      for (int d = 0; d < 2; ++d) ASSERT_EQ(c.item_at({a, b, d}), d * 12 + b * 4 + a);
  Tensor v = t.view({6, -1});
  EXPECT_EQ(v.shape(), (Shape{6, 4}));
  EXPECT_THROW(tr.view({24}), Error);
  EXPECT_THROW(t.view({5, -1}), Error);
  EXPECT_THROW(t.slice(1, 2, 4), Error);
}

// copy_ between strided views: rows with a contiguous last dim (a slice of a wider buffer, as a
// KV-cache write) and fully strided ones (a transpose) land element for element.
TEST(Tensor, CopyBetweenStridedViewsPlacesEveryElement) {
  Tensor src = Tensor::empty({2, 3, 4});
  for (int i = 0; i < 24; ++i) src.data<float>()[i] = static_cast<float>(i);
  Tensor cache = Tensor::zeros({2, 5, 4});
  Tensor slot = cache.slice(1, 1, 4);  // [2, 3, 4], rows contiguous, batch stride 20
  slot.copy_(src);
  for (int b = 0; b < 2; ++b)
    for (int t = 0; t < 5; ++t)
      for (int d = 0; d < 4; ++d)
        ASSERT_EQ(cache.item_at({b, t, d}), t >= 1 && t < 4 ? b * 12 + (t - 1) * 4 + d : 0)
            << b << " " << t << " " << d;
  Tensor back = Tensor::zeros({2, 3, 4});
  back.copy_(slot);
  EXPECT_EQ(back.to_vector(), src.to_vector());
  Tensor tr = Tensor::zeros({4, 3, 2});
  tr.copy_(src.transpose(0, 2));  // last dim strided on the source
  for (int a = 0; a < 4; ++a)
    for (int b = 0; b < 3; ++b)
      for (int d = 0; d < 2; ++d) ASSERT_EQ(tr.item_at({a, b, d}), d * 12 + b * 4 + a);
}

TEST(Tensor, DtypeConversionRoundTrip) {
  Tensor t = Tensor::from_vector(std::vector<float>{1.0f, -2.5f, 3.14159f, 65504.0f}, {4});
  Tensor b = t.to(DType::BF16);
  Tensor h = t.to(DType::F16);
  EXPECT_EQ(b.item_at({2}), bf16_to_float(float_to_bf16(3.14159f)));
  EXPECT_EQ(h.item_at({3}), 65504.0);
  EXPECT_EQ(t.to(DType::I32).item_at({1}), -2);
  EXPECT_THROW(t.data<int32_t>(), Error);
}

TEST(Allocator, TracksCurrentAndPeakBytes) {
  Allocator& a = cpu_allocator();
  const size_t base = a.stats().current_bytes;
  a.reset_peak();
  {
    Tensor x = Tensor::empty({1000});
    Tensor y = Tensor::empty({500});
    EXPECT_EQ(a.stats().current_bytes, base + 6000);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(x.raw_data()) % kCpuAlignment, 0u);
  }
  EXPECT_EQ(a.stats().current_bytes, base);
  EXPECT_EQ(a.stats().peak_bytes, base + 6000);
}

TEST(Philox, Random123KnownAnswers) {
  EXPECT_EQ(philox4x32_10({0, 0, 0, 0}, {0, 0}), (PhiloxBlock{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}));
  EXPECT_EQ(philox4x32_10({0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff}),
            (PhiloxBlock{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}));
  EXPECT_EQ(philox4x32_10({0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0}),
            (PhiloxBlock{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}));
}

TEST(Philox, StreamsAreIndexedNotSequential) {
  PhiloxStream a(42, 3, 7), b(42, 3, 7), other(42, 4, 7);
  Tensor full = Tensor::empty({100});
  a.fill_normal(full, 0.0f, 1.0f);
  Tensor tail = Tensor::empty({40});
  b.fill_normal(tail, 0.0f, 1.0f, 60);  // a shard starting at element 60 draws the same numbers
  for (int i = 0; i < 40; ++i) ASSERT_EQ(tail.item_at({i}), full.item_at({60 + i}));
  EXPECT_NE(other.u32(0), a.u32(0));
  // Moments of many normals: mean ~ 0, variance ~ 1.
  double s = 0, s2 = 0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) { const double x = a.normal(i); s += x; s2 += x * x; }
  EXPECT_NEAR(s / n, 0.0, 0.01);
  EXPECT_NEAR(s2 / n, 1.0, 0.02);
}

TEST(Allocator, ReusesLargeBlocksWithoutCountingThemAsLive) {
  Allocator& a = cpu_allocator();
  a.empty_cache();
  const size_t base = a.stats().current_bytes;
  void* first;
  {
    Tensor big = Tensor::empty({1 << 18});  // 1 MiB: cached on release
    first = big.raw_data();
  }
  EXPECT_EQ(a.stats().current_bytes, base);
  EXPECT_GE(a.stats().cached_bytes, size_t{1} << 20);
  {
    Tensor again = Tensor::empty({1 << 18});
    EXPECT_EQ(again.raw_data(), first);  // the same block came back
    EXPECT_EQ(a.stats().cached_bytes, 0u);
  }
  a.empty_cache();
  EXPECT_EQ(a.stats().cached_bytes, 0u);
  EXPECT_EQ(a.stats().current_bytes, base);
}
