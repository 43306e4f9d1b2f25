// The decoding matmul (kernels/cpu/matmul_few_rows.cpp, taken inside a DecodeMatmulScope):
// products of 2 .. kDecodeMaxRows rows against a weight [N, K] match a double-precision loop,
// every row's bits are the same whatever the call's row count, the scope is per thread and
// outside it kernels::matmul is exactly the sgemm it was (training numerics unchanged); and a
// verification forward (forward_cached with T_new = γ + 1, rows of equal and different
// lengths) matches the training forward's logits and argmax.
//
// Tolerance: each output is a K-term f32 dot product summed in 8 lanes, so
// |err| <= ~K * 2^-24 * sum_k |a_k b_k| (the classic bound, lanes only shorten the chains);
// checked per element at 2 K 2^-24 sum|a b| + 1e-30.
#include <gtest/gtest.h>

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <cstring>
#include <limits>
#include <thread>

#include "eval/generate.h"
#include "kernels/matmul.h"
#include "models/transformer.h"
#include "tests/support/reference.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

// Max over elements of |c - ref| / (2 K 2^-24 sum_k |a_rk b_nk|), ref in double: <= 1 passes.
// c = alpha a b^T + beta c_old.
double worst_error_ratio(const Tensor& a, const Tensor& b, const Tensor& c, const Tensor& c_old, double alpha,
                         double beta) {
  const int64_t M = a.size(0), K = a.size(1), N = b.size(0);
  double worst = 0;
  for (int64_t r = 0; r < M; ++r)
    for (int64_t n = 0; n < N; ++n) {
      double ref = 0, mag = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double p = static_cast<double>(a.item_at({r, k})) * b.item_at({n, k});
        ref += p;
        mag += std::fabs(p);
      }
      const double old = beta == 0 ? 0.0 : c_old.item_at({r, n});
      ref = alpha * ref + beta * old;
      const double bound = 2.0 * K * std::ldexp(1.0, -24) * (std::fabs(alpha) * mag + std::fabs(beta * old)) + 1e-30;
      worst = std::max(worst, std::fabs(c.item_at({r, n}) - ref) / bound);
    }
  return worst;
}

bool same_bits(const Tensor& x, const Tensor& y) {
  const Tensor a = x.contiguous(), b = y.contiguous();
  return a.shape() == b.shape() && std::memcmp(a.data<float>(), b.data<float>(), a.numel() * sizeof(float)) == 0;
}

TEST(DecodeMatmul, FewRowsMatchDoubleLoop) {
  kernels::DecodeMatmulScope scope;
  // K off the 8-lane grid and on it; N off the 6/4/3-row blocks; every row count taken.
  for (const auto& [N, K] : std::vector<std::pair<int64_t, int64_t>>{{13, 37}, {24, 64}, {50, 200}, {7, 5}})
    for (int64_t M = 2; M <= kernels::kDecodeMaxRows; ++M) {
      const Tensor a = random_tensor({M, K}, static_cast<uint32_t>(10 + M));
      const Tensor b = random_tensor({N, K}, static_cast<uint32_t>(100 + N));
      Tensor c = Tensor::full({M, N}, std::numeric_limits<float>::quiet_NaN());  // beta = 0 ignores NaN
      kernels::matmul(a, false, b, true, c);
      EXPECT_LE(worst_error_ratio(a, b, c, c, 1.0, 0.0), 1.0) << "M " << M << " N " << N << " K " << K;
    }
}

TEST(DecodeMatmul, AlphaBetaAndStridedViews) {
  kernels::DecodeMatmulScope scope;
  const int64_t M = 5, N = 19, K = 45;
  // Row views into wider buffers: lda, ldb, ldc exceed the column counts.
  const Tensor a = random_tensor({M, K + 3}, 1).slice(1, 0, K);
  const Tensor b = random_tensor({N, K + 8}, 2).slice(1, 2, K + 2);
  Tensor wide = random_tensor({M, N + 4}, 3);
  Tensor c = wide.slice(1, 1, N + 1);
  const Tensor c_old = c.clone();
  kernels::matmul(a, false, b, true, c, 0.5f, -1.5f);
  EXPECT_LE(worst_error_ratio(a, b, c, c_old, 0.5, -1.5), 1.0);
  EXPECT_EQ(wide.item_at({0, 0}), random_tensor({M, N + 4}, 3).item_at({0, 0})) << "wrote outside the view";
}

TEST(DecodeMatmul, EachRowIsTheSameWhateverTheRowCount) {
  // A verification forward's row t must not change with γ: row i of every call equals row i of
  // a call with all kDecodeMaxRows rows, bit for bit.
  kernels::DecodeMatmulScope scope;
  const int64_t N = 61, K = 131, all_rows = kernels::kDecodeMaxRows;
  const Tensor a = random_tensor({all_rows, K}, 4), b = random_tensor({N, K}, 5);
  const Tensor all = kernels::matmul(a, false, b, true);
  for (int64_t M = 2; M <= all_rows; ++M)
    for (int64_t first : {int64_t{0}, all_rows - M}) {
      const Tensor part = kernels::matmul(a.slice(0, first, first + M), false, b, true);
      EXPECT_TRUE(same_bits(part, all.slice(0, first, first + M))) << "rows " << first << " .. " << first + M - 1;
    }
}

TEST(DecodeMatmul, OutsideTheScopeMatmulIsTheSgemmItWas) {
  // Training shapes (any M) never see the decoding kernel: outside a scope kernels::matmul gives
  // cblas_sgemm's bits, also after a scope closed and while another thread holds one.
  const int64_t M = 4, N = 33, K = 70;
  const Tensor a = random_tensor({M, K}, 6), b = random_tensor({N, K}, 7);
  Tensor sgemm = Tensor::zeros({M, N});
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, a.data<float>(), K, b.data<float>(), K, 0.0f,
              sgemm.data<float>(), N);
  EXPECT_FALSE(kernels::decode_matmul_active());
  EXPECT_TRUE(same_bits(kernels::matmul(a, false, b, true), sgemm));
  {
    kernels::DecodeMatmulScope outer;
    {
      kernels::DecodeMatmulScope inner;
    }
    EXPECT_TRUE(kernels::decode_matmul_active()) << "closing a nested scope ends the outer one";
    bool other_thread_active = true;
    Tensor other;
    std::thread t([&] {
      other_thread_active = kernels::decode_matmul_active();
      other = kernels::matmul(a, false, b, true);
    });
    t.join();
    EXPECT_FALSE(other_thread_active);
    EXPECT_TRUE(same_bits(other, sgemm)) << "another thread took the decoding kernel";
    EXPECT_LE(max_rel_diff(kernels::matmul(a, false, b, true), sgemm), 1e-5);
  }
  EXPECT_FALSE(kernels::decode_matmul_active());
  EXPECT_TRUE(same_bits(kernels::matmul(a, false, b, true), sgemm));
  // Shapes the decoding kernel does not take keep sgemm inside a scope: b not transposed, too many rows.
  kernels::DecodeMatmulScope scope;
  const Tensor bt = b.transpose(0, 1).contiguous();
  Tensor sgemm_nn = Tensor::zeros({M, N});
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, a.data<float>(), K, bt.data<float>(), N, 0.0f,
              sgemm_nn.data<float>(), N);
  EXPECT_TRUE(same_bits(kernels::matmul(a, false, bt, false), sgemm_nn));
  const int64_t many = kernels::kDecodeMaxRows + 1;
  const Tensor tall = random_tensor({many, K}, 8);
  Tensor sgemm_tall = Tensor::zeros({many, N});
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, many, N, K, 1.0f, tall.data<float>(), K, b.data<float>(), K,
              0.0f, sgemm_tall.data<float>(), N);
  EXPECT_TRUE(same_bits(kernels::matmul(tall, false, b, true), sgemm_tall));
}

ModelConfig small_llama() {
  ModelConfig c = ModelConfig::llama();
  c.vocab_size = 90;
  c.hidden_size = 64;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.intermediate_size = 176;
  c.max_position_embeddings = 64;
  c.norm_eps = 1e-5;
  return c;
}

// Largest over positions of max|got - want| / max|want| for logits [1, T, V].
double worst_position_rel_diff(const Tensor& got, const Tensor& want) {
  double worst = 0;
  for (int64_t t = 0; t < want.size(1); ++t)
    worst = std::max(worst, max_rel_diff(got.slice(1, t, t + 1).contiguous(), want.slice(1, t, t + 1).contiguous()));
  return worst;
}

int32_t argmax(const float* row, int64_t V) { return static_cast<int32_t>(std::max_element(row, row + V) - row); }

TEST(DecodeMatmul, VerificationForwardMatchesTrainingForward) {
  // Rows 0..3 hold prefixes of 20, 17, 20 and 11 tokens (different lengths, as after different
  // acceptance), then verify T_new = 1, 2, 5, 7 tokens each: the logits of every new position match
  // the training forward (sgemm, whole sequence) of that row, and so do their argmaxes wherever
  // the top two logits are apart by more than the tolerance.
  TransformerLM model(small_llama());
  model.init_weights(7);
  randomize_params(model.params());
  const int64_t V = model.config().vocab_size, B = 4, full = 20, max_new = 7;
  const std::vector<int64_t> lengths{20, 17, 20, 11};
  const Tensor ids = random_ids({B, full + max_new}, static_cast<int32_t>(V), 9);
  int compared = 0;
  for (bool ragged : {false, true})
    for (int64_t T : {1, 2, 5, 7}) {
      KVCache kv(model.config(), B, full + max_new);
      model.forward_cached(ids.slice(1, 0, full).contiguous(), kv, true);
      Tensor step = Tensor::empty({B, T}, DType::I32);
      for (int64_t b = 0; b < B; ++b) {
        const int64_t len = ragged ? lengths[static_cast<size_t>(b)] : full;
        kv.truncate(b, len);
        for (int64_t t = 0; t < T; ++t) step.data<int32_t>()[b * T + t] = ids.data<int32_t>()[b * (full + max_new) + len + t];
      }
      const Tensor logits = model.forward_cached(step, kv);
      for (int64_t b = 0; b < B; ++b) {
        const int64_t len = ragged ? lengths[static_cast<size_t>(b)] : full;
        Cache c;
        const Tensor want = model.forward(ids.slice(0, b, b + 1).slice(1, 0, len + T).contiguous(), c)
                                .slice(1, len, len + T)
                                .contiguous();
        const Tensor got = logits.slice(0, b, b + 1).contiguous();
        EXPECT_LE(worst_position_rel_diff(got, want), 1e-5) << "row " << b << " T_new " << T << " ragged " << ragged;
        for (int64_t t = 0; t < T; ++t) {
          const float* w = want.data<float>() + t * V;
          std::vector<float> sorted(w, w + V);
          std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
          if (sorted[0] - sorted[1] <= 1e-4f * std::fabs(sorted[0])) continue;  // a near tie: either is right
          EXPECT_EQ(argmax(got.data<float>() + t * V, V), argmax(w, V)) << "row " << b << " position " << len + t;
          ++compared;
        }
      }
    }
  EXPECT_GT(compared, 100) << "too many near ties: the argmax check compared little";
}

TEST(DecodeMatmul, GreedyGenerationMatchesTheTrainingForwardLoop) {
  // generate() now prefills short prompts (<= kDecodeMaxRows tokens) and decodes batches of
  // rows through the decoding kernel; its greedy tokens equal re-running the training forward.
  TransformerLM model(small_llama());
  model.init_weights(7);
  randomize_params(model.params());
  const int64_t V = model.config().vocab_size;
  std::vector<std::vector<int32_t>> prompts;
  for (int64_t len : {6, 12, 9, 12}) {
    const Tensor t = random_ids({len}, static_cast<int32_t>(V), static_cast<uint32_t>(30 + len));
    prompts.emplace_back(t.data<int32_t>(), t.data<int32_t>() + len);
  }
  const auto out = generate(model, prompts, 16, SamplingConfig::greedy());
  ASSERT_EQ(out.size(), prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    std::vector<int32_t> seq = prompts[i];
    for (size_t j = 0; j < out[i].size(); ++j) {
      Cache c;
      const int64_t T = static_cast<int64_t>(seq.size());
      const Tensor logits = model.forward(Tensor::from_vector(seq, {1, T}), c);
      const int32_t want = argmax(logits.data<float>() + (T - 1) * V, V);
      ASSERT_EQ(out[i][j], want) << "prompt " << i << " token " << j;
      seq.push_back(want);
    }
  }
  std::vector<int32_t> distinct = out[1];  // not a constant continuation (that could hide bugs)
  std::sort(distinct.begin(), distinct.end());
  EXPECT_GT(std::unique(distinct.begin(), distinct.end()) - distinct.begin(), 3);
}

}  // namespace
