// KV-cached inference against the training forward, and generate() against a
// naive loop that re-runs the full forward on the growing sequence.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "core/rng.h"
#include "eval/generate.h"
#include "models/transformer.h"
#include "tests/support/reference.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

ModelConfig gpt2_config() {
  ModelConfig c = ModelConfig::gpt2();
  c.vocab_size = 97;
  c.hidden_size = 64;
  c.num_hidden_layers = 2;
  c.num_attention_heads = c.num_key_value_heads = 4;
  c.intermediate_size = 128;
  c.max_position_embeddings = 80;
  return c;
}

ModelConfig llama_gqa_config() {
  ModelConfig c = ModelConfig::llama();
  c.vocab_size = 101;
  c.hidden_size = 96;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 6;
  c.num_key_value_heads = 2;
  c.intermediate_size = 168;
  c.max_position_embeddings = 96;
  c.norm_eps = 1e-5;
  return c;
}

std::unique_ptr<TransformerLM> make_model(const ModelConfig& c) {
  auto m = std::make_unique<TransformerLM>(c);
  m->init_weights(7);
  randomize_params(m->params());
  return m;
}

// Largest over positions t of max|got[:, t] - want[:, t]| / max|want[:, t]|.
double worst_position_rel_diff(const Tensor& got, const Tensor& want) {
  EXPECT_EQ(got.shape(), want.shape());
  double worst = 0;
  for (int64_t t = 0; t < want.size(1); ++t)
    worst = std::max(worst, max_rel_diff(got.slice(1, t, t + 1).contiguous(), want.slice(1, t, t + 1).contiguous()));
  return worst;
}

// Feeds ids [B, T] to forward_cached in chunks of the given sizes and stacks the logits.
Tensor cached_logits(TransformerLM& model, const Tensor& ids, const std::vector<int64_t>& chunks) {
  const int64_t B = ids.size(0), T = ids.size(1), V = model.config().vocab_size;
  KVCache kv(model.config(), B, T);
  Tensor out = Tensor::empty({B, T, V});
  int64_t t = 0;
  for (int64_t n : chunks) {
    const Tensor part = model.forward_cached(ids.slice(1, t, t + n).contiguous(), kv);
    EXPECT_EQ(part.shape(), Shape({B, n, V}));
    Tensor dst = out.slice(1, t, t + n);
    dst.copy_(part);
    t += n;
    EXPECT_EQ(kv.length(), t);
  }
  EXPECT_EQ(t, T) << "chunks must cover the sequence";
  return out;
}

void check_cached_matches_full(const ModelConfig& config, const std::string& tag) {
  auto model = make_model(config);
  const int64_t B = 2, T = 75;  // crosses the attention kernel's 64-key block boundary
  const Tensor ids = random_ids({B, T}, static_cast<int32_t>(config.vocab_size), 5);
  Cache cache;
  const Tensor full = model->forward(ids, cache).clone();

  const double one_chunk = worst_position_rel_diff(cached_logits(*model, ids, {T}), full);
  std::vector<int64_t> steps{9};  // prefill 9, then one token at a time
  while (steps.size() < static_cast<size_t>(T - 9 + 1)) steps.push_back(1);
  const double stepwise = worst_position_rel_diff(cached_logits(*model, ids, steps), full);
  const double two_chunks = worst_position_rel_diff(cached_logits(*model, ids, {33, 42}), full);
  EXPECT_LE(one_chunk, 1e-5) << tag << " one-chunk prefill";
  EXPECT_LE(stepwise, 1e-5) << tag << " prefill + one token per step";
  EXPECT_LE(two_chunks, 1e-5) << tag << " prefill in two chunks";

  // last_position_only: just the final position's logits.
  KVCache kv(config, B, T);
  const Tensor last = model->forward_cached(ids, kv, true);
  ASSERT_EQ(last.shape(), Shape({B, 1, config.vocab_size}));
  EXPECT_LE(max_rel_diff(last, full.slice(1, T - 1, T).contiguous()), 1e-5) << tag << " last position";
  std::printf("%s: cached vs full logits rel err: one chunk %.2e, stepwise %.2e, two chunks %.2e\n", tag.c_str(),
              one_chunk, stepwise, two_chunks);
}

// Greedy continuation of one prompt by re-running the full forward each step.
std::vector<int32_t> naive_greedy(TransformerLM& model, std::vector<int32_t> seq, int max_new) {
  std::vector<int32_t> out;
  const int64_t V = model.config().vocab_size;
  for (int i = 0; i < max_new; ++i) {
    const int64_t T = static_cast<int64_t>(seq.size());
    Cache c;
    const Tensor logits = model.forward(Tensor::from_vector(seq, {1, T}), c);
    const float* row = logits.data<float>() + (T - 1) * V;
    const int32_t tok = static_cast<int32_t>(std::max_element(row, row + V) - row);
    out.push_back(tok);
    seq.push_back(tok);
  }
  return out;
}

std::vector<int32_t> prompt(int64_t len, int32_t vocab, uint32_t stream) {
  const Tensor t = random_ids({len}, vocab, stream);
  return std::vector<int32_t>(t.data<int32_t>(), t.data<int32_t>() + len);
}

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

TEST(ForwardCached, Gpt2MatchesFullForward) { check_cached_matches_full(gpt2_config(), "gpt2"); }

TEST(ForwardCached, LlamaGqaMatchesFullForward) { check_cached_matches_full(llama_gqa_config(), "llama_gqa"); }

// A window of 20 on T = 75: chunks and single steps whose window starts inside earlier key blocks.
TEST(ForwardCached, MistralSlidingWindowMatchesFullForward) {
  ModelConfig c = llama_gqa_config();
  c.model_type = "mistral";
  c.sliding_window = 20;
  c.rope_scaling.type = "llama3";
  c.rope_scaling.factor = 8.0;
  c.rope_scaling.original_max_position_embeddings = 32;
  check_cached_matches_full(c, "mistral_window20");
}

TEST(ForwardCached, Qwen2MatchesFullForward) {
  ModelConfig c = llama_gqa_config();
  c.model_type = "qwen2";
  check_cached_matches_full(c, "qwen2");
}

TEST(ForwardCached, LlamaTiedMatchesFullForward) {
  ModelConfig c = llama_gqa_config();
  c.tie_word_embeddings = true;
  c.num_key_value_heads = 6;
  check_cached_matches_full(c, "llama_tied");
}

TEST(ForwardCached, DecodeKeepsTheCacheBuffersAndLeaksNothing) {
  const ModelConfig c = llama_gqa_config();
  auto model = make_model(c);
  KVCache kv(c, 2, 40);
  const size_t bytes = kv.bytes();
  EXPECT_EQ(bytes, size_t{2} * c.num_hidden_layers * 2 * 40 * c.num_key_value_heads * c.resolved_head_dim() * 4);
  std::vector<const void*> buffers;
  for (int64_t l = 0; l < kv.num_layers(); ++l) {
    buffers.push_back(kv.layer(l).k.raw_data());
    buffers.push_back(kv.layer(l).v.raw_data());
  }
  model->forward_cached(random_ids({2, 10}, 101, 3), kv);
  const size_t live = cpu_allocator().stats().current_bytes;
  for (int i = 0; i < 20; ++i) model->forward_cached(random_ids({2, 1}, 101, 10 + i), kv);
  EXPECT_EQ(cpu_allocator().stats().current_bytes, live) << "a decode step retained memory";
  EXPECT_EQ(kv.length(), 30);
  EXPECT_EQ(kv.bytes(), bytes);
  for (int64_t l = 0; l < kv.num_layers(); ++l) {
    EXPECT_EQ(kv.layer(l).k.raw_data(), buffers[2 * l]) << "layer " << l << " K was reallocated";
    EXPECT_EQ(kv.layer(l).v.raw_data(), buffers[2 * l + 1]) << "layer " << l << " V was reallocated";
  }
}

TEST(ForwardCached, ErrorsNameTheNumbers) {
  const ModelConfig c = gpt2_config();  // max_position_embeddings = 80
  auto model = make_model(c);
  KVCache kv(c, 2, 10);
  model->forward_cached(random_ids({2, 8}, 97, 1), kv);
  std::string e = error_of([&] { model->forward_cached(random_ids({2, 3}, 97, 2), kv); });
  EXPECT_TRUE(has(e, "11") && has(e, "max_len = 10")) << e;
  EXPECT_EQ(kv.length(), 8) << "a rejected call must not advance the cache";
  e = error_of([&] { KVCache too_long(c, 1, 81); });
  EXPECT_TRUE(has(e, "81") && has(e, "max_position_embeddings = 80")) << e;
  e = error_of([&] { model->forward_cached(random_ids({1, 2}, 97, 3), kv); });
  EXPECT_TRUE(has(e, "batch 1") && has(e, "batch 2")) << e;
  KVCache other(llama_gqa_config(), 2, 10);
  e = error_of([&] { model->forward_cached(random_ids({2, 2}, 97, 3), other); });
  EXPECT_TRUE(has(e, "KVCache")) << e;
}

TEST(Generate, GreedyMatchesNaiveFullForwardLoop) {
  for (const ModelConfig& c : {gpt2_config(), llama_gqa_config()}) {
    auto model = make_model(c);
    const int32_t V = static_cast<int32_t>(c.vocab_size);
    // Two prompts of length 6 batched together, and one of length 3 (its own batch).
    const std::vector<std::vector<int32_t>> prompts{prompt(6, V, 1), prompt(3, V, 2), prompt(6, V, 3)};
    const auto got = generate(*model, prompts, 24, SamplingConfig::greedy());
    ASSERT_EQ(got.size(), prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i)
      EXPECT_EQ(got[i], naive_greedy(*model, prompts[i], 24)) << c.model_type << " prompt " << i;
    // Not a trivially constant continuation (the comparison above could then hide bugs).
    std::vector<int32_t> distinct = got[0];
    std::sort(distinct.begin(), distinct.end());
    EXPECT_GT(std::unique(distinct.begin(), distinct.end()) - distinct.begin(), 3) << c.model_type;
  }
}

TEST(Generate, SamplingIsReproducibleAndBatchIndependent) {
  auto model = make_model(llama_gqa_config());
  const std::vector<std::vector<int32_t>> prompts{prompt(5, 101, 1), prompt(5, 101, 2)};
  SamplingConfig s;
  s.temperature = 1.0;
  s.seed = 123;
  const auto a = generate(*model, prompts, 30, s);
  EXPECT_EQ(generate(*model, prompts, 30, s), a);
  EXPECT_EQ(generate(*model, {prompts[0]}, 30, s)[0], a[0]) << "a prompt's draws depend on its batch";
  const auto twins = generate(*model, {prompts[0], prompts[0]}, 30, s);
  EXPECT_NE(twins[0], twins[1]) << "two sequences share one random stream";
  s.seed = 124;
  EXPECT_NE(generate(*model, prompts, 30, s), a) << "the seed has no effect";
}

TEST(Generate, TopKOneEqualsGreedy) {
  auto model = make_model(gpt2_config());
  const std::vector<std::vector<int32_t>> prompts{prompt(4, 97, 7), prompt(4, 97, 8)};
  const auto greedy = generate(*model, prompts, 30, SamplingConfig::greedy());
  SamplingConfig s;
  s.temperature = 1.3;
  s.seed = 5;
  EXPECT_NE(generate(*model, prompts, 30, s), greedy) << "plain sampling should differ from greedy here";
  s.top_k = 1;
  EXPECT_EQ(generate(*model, prompts, 30, s), greedy);
  s.top_p = 1e-6;  // the nucleus is the single most likely token
  s.top_k = 0;
  EXPECT_EQ(generate(*model, prompts, 30, s), greedy);
}

TEST(Generate, StopTokenEndsEachSequence) {
  auto model = make_model(llama_gqa_config());
  const std::vector<std::vector<int32_t>> prompts{prompt(5, 101, 11), prompt(5, 101, 12)};
  const auto free_run = generate(*model, prompts, 25, SamplingConfig::greedy());
  const int32_t stop = free_run[0][4];
  const auto stopped = generate(*model, prompts, 25, SamplingConfig::greedy(), stop);
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto first = std::find(free_run[i].begin(), free_run[i].end(), stop);
    const std::vector<int32_t> want(free_run[i].begin(), first == free_run[i].end() ? first : first + 1);
    EXPECT_EQ(stopped[i], want) << "prompt " << i;
  }
  EXPECT_LE(stopped[0].size(), 5u);
  EXPECT_EQ(stopped[0].back(), stop);
}

TEST(Generate, ErrorsAreClear) {
  auto model = make_model(gpt2_config());  // max_position_embeddings = 80
  std::string e = error_of([&] { generate(*model, {prompt(70, 97, 1)}, 11, SamplingConfig::greedy()); });
  EXPECT_TRUE(has(e, "81") && has(e, "max_position_embeddings = 80")) << e;
  EXPECT_EQ(generate(*model, {prompt(70, 97, 1)}, 10, SamplingConfig::greedy())[0].size(), 10u);
  e = error_of([&] { generate(*model, {{}}, 3, SamplingConfig::greedy()); });
  EXPECT_TRUE(has(e, "empty")) << e;
  e = error_of([&] { generate(*model, {{1, 97}}, 3, SamplingConfig::greedy()); });
  EXPECT_TRUE(has(e, "97") && has(e, "vocabulary")) << e;
  SamplingConfig bad;
  bad.top_p = 0;
  e = error_of([&] { generate(*model, {{1, 2}}, 3, bad); });
  EXPECT_TRUE(has(e, "top_p")) << e;
}
