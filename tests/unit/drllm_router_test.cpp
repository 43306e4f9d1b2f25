// Dr.LLM routers (models/drllm_router.h) and their supervision (trainer/drllm_search.h,
// trainer/drllm_labels.h, trainer/drllm_task.h): the windowed-mean rule (T < W included) and the
// router's logits against a naive loop, the untrained router choosing "execute", the focal loss
// and the router's backward against central finite differences, the label search's guarantees on
// synthetic loss landscapes, and the label file's round trip and refusals.
#include <gtest/gtest.h>

#include <unistd.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "models/drllm_router.h"
#include "tests/support/reference.h"
#include "trainer/drllm_labels.h"
#include "trainer/drllm_search.h"
#include "trainer/drllm_task.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

// x [B, T, d] -> the naive windowed means, in double.
std::vector<double> naive_means(const Tensor& x, int64_t W, int64_t& windows) {
  const int64_t B = x.size(0), T = x.size(1), d = x.size(2);
  windows = T < W ? 1 : W;
  const int64_t n = T / windows;
  std::vector<double> m(B * windows * d, 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t w = 0; w < windows; ++w)
      for (int64_t t = w * n; t < (w + 1) * n; ++t)
        for (int64_t i = 0; i < d; ++i) m[(b * windows + w) * d + i] += x.data<float>()[(b * T + t) * d + i] / n;
  return m;
}

double gelu_tanh(double v) { return 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v))); }

Param& param(DrLLMRouter& r, const std::string& suffix) {
  for (Param* p : r.params())
    if (p->name.size() >= suffix.size() && p->name.compare(p->name.size() - suffix.size(), suffix.size(), suffix) == 0)
      return *p;
  throw std::runtime_error("no param " + suffix);
}

void randomize_router(DrLLMRouter& r, uint32_t stream) {
  uint32_t s = stream;
  for (Param* p : r.params()) p->value.copy_(random_tensor(p->value.shape(), s++, -0.6f, 0.6f));
}

}  // namespace

TEST(DrLLMRouter, WindowedMeansFollowTheRuleIncludingShortSequences) {
  for (const auto& [T, W] : std::vector<std::pair<int64_t, int64_t>>{{10, 4}, {8, 8}, {3, 4}, {1, 8}, {13, 3}}) {
    const Tensor x = random_tensor({2, T, 5}, 11);
    const Tensor m = drllm_windowed_means(x, W);
    int64_t windows = 0;
    const std::vector<double> ref = naive_means(x, W, windows);
    ASSERT_EQ(m.shape(), Shape({2, windows, 5})) << "T " << T << " W " << W;
    EXPECT_EQ(drllm_window_count(T, W), windows);
    for (size_t i = 0; i < ref.size(); ++i) EXPECT_NEAR(m.data<float>()[i], ref[i], 1e-6) << "T " << T << " i " << i;
  }
  // T = 10, W = 4: windows of floor(10/4) = 2 tokens; tokens 8 and 9 are dropped.
  Tensor x = Tensor::zeros({1, 10, 1});
  for (int t = 0; t < 10; ++t) x.data<float>()[t] = static_cast<float>(t);
  const Tensor m = drllm_windowed_means(x, 4);
  EXPECT_FLOAT_EQ(m.data<float>()[0], 0.5f);
  EXPECT_FLOAT_EQ(m.data<float>()[3], 6.5f);
}

TEST(DrLLMRouter, LogitsMatchANaiveLoop) {
  const int64_t d = 8, h = 5, W = 3, B = 2, T = 11;
  DrLLMRouter router("model.layers.4", d, h);
  EXPECT_EQ(param(router, "fc1.weight").name, "model.layers.4.router.fc1.weight");
  EXPECT_EQ(param(router, "fc2.weight").value.shape(), Shape({3, h}));
  randomize_router(router, 21);
  const Tensor x = random_tensor({B, T, d}, 22);
  Cache c;
  const Tensor z = router.forward(drllm_windowed_means(x, W), c);
  const Tensor zi = router.infer(drllm_windowed_means(x, W));
  int64_t windows = 0;
  const std::vector<double> m = naive_means(x, W, windows);
  const float* w1 = param(router, "fc1.weight").value.data<float>();
  const float* b1 = param(router, "fc1.bias").value.data<float>();
  const float* w2 = param(router, "fc2.weight").value.data<float>();
  const float* b2 = param(router, "fc2.bias").value.data<float>();
  for (int64_t b = 0; b < B; ++b)
    for (int k = 0; k < 3; ++k) {
      double zk = 0;
      for (int64_t w = 0; w < windows; ++w) {
        double out = b2[k];
        for (int64_t j = 0; j < h; ++j) {
          double pre = b1[j];
          for (int64_t i = 0; i < d; ++i) pre += w1[j * d + i] * m[(b * windows + w) * d + i];
          out += w2[k * h + j] * gelu_tanh(pre);
        }
        zk += out / windows;
      }
      EXPECT_NEAR(z.data<float>()[b * 3 + k], zk, 1e-5);
      EXPECT_EQ(z.data<float>()[b * 3 + k], zi.data<float>()[b * 3 + k]);
    }
}

TEST(DrLLMRouter, AnUntrainedRouterExecutesEveryLayer) {
  DrLLMRouter router("model.layers.0", 6, 4);
  init_params(router.params(), 5, 0.02f, 0.02f);
  const Tensor z = router.infer(drllm_windowed_means(random_tensor({3, 7, 6}, 3, -50.0f, 50.0f), 4));
  for (int64_t b = 0; b < 3; ++b) {
    EXPECT_EQ(z.data<float>()[b * 3 + 0], 0.0f);
    EXPECT_EQ(z.data<float>()[b * 3 + 1], 1.0f);
    EXPECT_EQ(z.data<float>()[b * 3 + 2], 0.0f);
  }
  EXPECT_EQ(drllm_actions(z), std::vector<int32_t>(3, 1));
  // fc1 follows nn.Linear's weight default U(+-1/sqrt(d)), and moves away from 0.
  const Tensor& w1 = param(router, "fc1.weight").value;
  double mx = 0;
  for (int64_t i = 0; i < w1.numel(); ++i) mx = std::max(mx, std::fabs(double(w1.data<float>()[i])));
  EXPECT_LE(mx, 1.0 / std::sqrt(6.0));
  EXPECT_GT(mx, 0.1);
}

TEST(DrLLMRouter, FocalLossAndRouterBackwardMatchFiniteDifferences) {
  const int64_t d = 6, h = 4, W = 2, B = 3;
  const double alpha[3] = {0.7, 1.3, 2.1};
  const std::vector<int32_t> labels = {0, 2, 1};
  for (double gamma : {0.0, 0.5, 2.0}) {
    DrLLMRouter router("model.layers.1", d, h);
    randomize_router(router, 31);
    const Tensor means = drllm_windowed_means(random_tensor({B, 9, d}, 32), W);
    auto loss = [&]() {
      Tensor dz;
      return drllm_focal_loss(router.infer(means), labels, alpha, gamma, 1.0, dz);
    };
    // dL/dz against differences of the focal loss alone.
    Tensor z = router.infer(means), dz;
    drllm_focal_loss(z, labels, alpha, gamma, 1.0, dz);
    const Tensor fd_z = finite_difference_grad(z, [&]() {
      Tensor unused;
      return drllm_focal_loss(z, labels, alpha, gamma, 1.0, unused);
    });
    EXPECT_LT(max_abs_diff(dz, fd_z), 2e-3) << "gamma " << gamma;
    // The router's parameter gradients through its backward.
    for (Param* p : router.params()) p->zero_grad();
    Cache c;
    const Tensor z2 = router.forward(means, c);
    Tensor dz2;
    drllm_focal_loss(z2, labels, alpha, gamma, 1.0, dz2);
    EXPECT_FALSE(router.backward(dz2, c).defined());  // the input is detached
    for (Param* p : router.params()) {
      const Tensor fd = finite_difference_grad(p->value, loss, 1e-2);
      EXPECT_LT(max_abs_diff(p->grad, fd), 2e-3 * std::max(1.0, max_abs_diff(fd, Tensor::zeros(fd.shape()))))
          << p->name << " gamma " << gamma;
    }
  }
  // gamma = 0 with alpha = 1 is the cross-entropy.
  const double ones[3] = {1, 1, 1};
  Tensor z = Tensor::from_vector(std::vector<float>{0.2f, -1.0f, 0.5f}, Shape{1, 3}), dz;
  const double ce = std::log(std::exp(0.2) + std::exp(-1.0) + std::exp(0.5)) - 0.5;
  EXPECT_NEAR(drllm_focal_loss(z, {2}, ones, 0.0, 1.0, dz), ce, 1e-6);
}

TEST(DrLLMRouter, ClassAlphaIsInverseFrequency) {
  const double counts[3] = {1, 6, 0};
  double alpha[3];
  drllm_class_alpha(counts, alpha);
  EXPECT_DOUBLE_EQ(alpha[0], 7.0 / 3.0);
  EXPECT_DOUBLE_EQ(alpha[1], 7.0 / 18.0);
  EXPECT_DOUBLE_EQ(alpha[2], 0.0);
}

TEST(DrLLMSearch, PathsAreNeverWorseThanAllExecuteWithinTheBudget) {
  // Additive synthetic landscapes: loss = 1 + sum_j cost[row][j][p_j] (cost of execute = 0).
  const int64_t rows = 24, n = 5;
  std::vector<std::vector<std::array<double, 3>>> cost(rows, std::vector<std::array<double, 3>>(n));
  const Tensor u = random_tensor({rows, n, 2}, 41, -0.02f, 0.03f);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < n; ++j) cost[r][j] = {u.data<float>()[(r * n + j) * 2], 0.0, u.data<float>()[(r * n + j) * 2 + 1]};
  auto loss_of = [&](int64_t r, const std::vector<int32_t>& p) {
    double l = 1;
    for (int64_t j = 0; j < n; ++j) l += cost[r][j][p[j]];
    return l;
  };
  for (int64_t budget : {1, 3, 8, 40}) {
    std::vector<int64_t> spent(rows, 0);
    const DrLLMPathEvaluator eval = [&](const std::vector<int64_t>& which, const std::vector<std::vector<int32_t>>& ps) {
      std::vector<double> out;
      for (size_t i = 0; i < which.size(); ++i) {
        ++spent[which[i]];
        out.push_back(loss_of(which[i], ps[i]));
      }
      return out;
    };
    const DrLLMSearchResult res = search_drllm_paths(rows, n, eval, {budget, 0.01});
    for (int64_t r = 0; r < rows; ++r) {
      EXPECT_LE(spent[r], budget);
      EXPECT_EQ(res.evaluations[r], spent[r]);
      EXPECT_NEAR(res.losses[r], loss_of(r, res.paths[r]), 1e-12);
      EXPECT_LE(res.losses[r], 1.01 * 1.0 + 1e-12);
      int64_t passes = 0;
      for (int32_t a : res.paths[r]) passes += a;
      EXPECT_LE(passes, n);
      if (budget == 1) EXPECT_EQ(res.paths[r], std::vector<int32_t>(n, 1));
    }
    // Deterministic.
    std::fill(spent.begin(), spent.end(), 0);
    EXPECT_EQ(search_drllm_paths(rows, n, eval, {budget, 0.01}).paths, res.paths);
  }
}

TEST(DrLLMSearch, FindsSkipsAndARepeatOnAKnownLandscape) {
  // Layers 0..3: skipping 3 or 2 costs nothing, skipping 1 or 0 costs 0.5; repeating 0 gains 0.2.
  const DrLLMPathEvaluator eval = [&](const std::vector<int64_t>& which, const std::vector<std::vector<int32_t>>& ps) {
    std::vector<double> out;
    for (const auto& p : ps) {
      double l = 2.0;
      if (p[0] == 0) l += 0.5;
      if (p[1] == 0) l += 0.5;
      if (p[0] == 2) l -= 0.2;
      if (p[1] == 2) l += 0.3;
      out.push_back(l);
    }
    (void)which;
    return out;
  };
  const DrLLMSearchResult res = search_drllm_paths(1, 4, eval, {32, 0.0});
  EXPECT_EQ(res.paths[0], (std::vector<int32_t>{2, 1, 0, 0}));
  EXPECT_NEAR(res.losses[0], 1.8, 1e-12);
  EXPECT_NE(error_of([&] { search_drllm_paths(1, 4, eval, {0, 0.0}); }).find("search_budget"), std::string::npos);
}

TEST(DrLLMLabels, RoundTripTornTailAndRefusals) {
  const DrLLMLabelSettings settings{{3, 5}, 16, 0.01};
  std::string bytes = drllm_labels_header(settings) + drllm_labels_record(7, {0, 2}) + drllm_labels_record(9, {1, 1});
  const DrLLMLabelFile f = parse_drllm_labels(bytes, "f");
  EXPECT_TRUE(f.settings == settings);
  ASSERT_EQ(f.paths.size(), 2u);
  EXPECT_EQ(f.paths.at(7), (std::vector<int32_t>{0, 2}));
  EXPECT_EQ(f.valid_bytes, bytes.size());
  // A torn last record is ignored.
  const std::string torn = bytes + drllm_labels_record(11, {2, 2}).substr(0, 5);
  EXPECT_EQ(parse_drllm_labels(torn, "f").paths.size(), 2u);
  EXPECT_EQ(parse_drllm_labels(torn, "f").valid_bytes, bytes.size());
  // Any flipped byte of a whole file is an Error (never a crash, never silently other labels).
  for (size_t i = 0; i < bytes.size(); ++i) {
    std::string bad = bytes;
    bad[i] ^= 0x41;
    EXPECT_NE(error_of([&] { parse_drllm_labels(bad, "labels.bin"); }), "(no error)") << "byte " << i;
  }
  EXPECT_NE(error_of([&] { parse_drllm_labels("", "x"); }).find("magic"), std::string::npos);
  // The store: appends, reloads, refuses other settings.
  const std::string dir = std::filesystem::temp_directory_path() / ("drllm_labels_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  {
    DrLLMLabelStore store(dir, "dp0.bin", settings);
    store.add(1, {0, 1});
    store.add(2, {2, 1});
  }
  DrLLMLabelStore again(dir, "", settings);
  ASSERT_NE(again.find(2), nullptr);
  EXPECT_EQ(*again.find(2), (std::vector<int32_t>{2, 1}));
  EXPECT_EQ(again.find(3), nullptr);
  DrLLMLabelSettings other = settings;
  other.budget = 8;
  EXPECT_NE(error_of([&] { DrLLMLabelStore(dir, "", other); }).find("search_budget"), std::string::npos);
  std::filesystem::remove_all(dir);
}
