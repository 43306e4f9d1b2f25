// `anvil data generate` (eval/generate_data.h): the written store reads back, its documents are
// the corpus prompts followed by exactly what generate() produces for them (greedy and sampled),
// the loss mask covers exactly the generated tokens, the batch size changes nothing, an
// interrupted run leaves no file, and bad input is refused before any work, naming the flag.
// The reference is generate() itself, called once over all the prompts; the prompts come from a
// naive scan of the corpus store.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "data/token_store.h"
#include "data/tokenizer.h"
#include "eval/generate_data.h"
#include "tests/support/tiny_run.h"

using namespace anvil;
using namespace anvil::testing;
namespace fs = std::filesystem;

namespace {
const std::string kAnvil = ANVIL_BINARY;

constexpr int64_t kPromptTokens = 8;
constexpr int kMaxTokens = 12;

// A tiny Llama over the tiny run's 512-token vocabulary, with fresh weights large enough
// (initializer_range 0.3) that its distributions are far from uniform.
ModelConfig tiny_config() {
  ModelConfig c = ModelConfig::llama();
  c.vocab_size = 512;
  c.hidden_size = 32;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.intermediate_size = 64;
  c.max_position_embeddings = 64;
  c.initializer_range = 0.3;
  return c;
}

struct Fixture {
  TinyRun run;
  std::string tokenizer_hash;
  std::unique_ptr<TransformerLM> model;

  explicit Fixture(const std::string& name) : run(make_tiny_run(name)) {
    tokenizer_hash = Tokenizer::load(run.tokenizer).hash_hex();
    model = std::make_unique<TransformerLM>(tiny_config());
    model->init_weights(11);
  }
  GenerateDataOptions options(const std::string& out) const {
    GenerateDataOptions o;
    o.input = run.store;
    o.output = run.dir + "/" + out;
    o.prompt_tokens = kPromptTokens;
    o.max_tokens = kMaxTokens;
    o.documents = 10;
    o.batch = 4;
    o.checkpoint = "fresh tiny llama";
    return o;
  }
  GenerateDataStats generate(const GenerateDataOptions& o) { return generate_data(*model, o, tokenizer_hash); }
};

// Naive scan: the first prompt_tokens tokens of every document longer than prompt_tokens, up to `limit`.
std::vector<std::vector<int32_t>> corpus_prompts(const TokenStore& store, int64_t prompt_tokens, int64_t limit,
                                                 int64_t* skipped = nullptr) {
  std::vector<std::vector<int32_t>> prompts;
  int64_t short_docs = 0;
  for (int64_t d = 0; d < store.num_documents() && (limit < 0 || int64_t(prompts.size()) < limit); ++d) {
    const std::vector<int32_t> doc = store.document(d);
    if (int64_t(doc.size()) <= prompt_tokens) {
      ++short_docs;
      continue;
    }
    prompts.emplace_back(doc.begin(), doc.begin() + prompt_tokens);
  }
  if (skipped) *skipped = short_docs;
  return prompts;
}

// The output store holds prompt k + generate()'s continuation k (+ an appended EOS when the model
// did not emit one), masked 0 / 1 / 0.
void expect_store_matches(const std::string& path, const std::vector<std::vector<int32_t>>& prompts,
                          const std::vector<std::vector<int32_t>>& continuations, int32_t eos) {
  const TokenStore out = TokenStore::open(path);
  ASSERT_EQ(out.num_documents(), int64_t(prompts.size()));
  ASSERT_TRUE(out.has_loss_mask());
  for (size_t k = 0; k < prompts.size(); ++k) {
    SCOPED_TRACE("document " + std::to_string(k));
    const std::vector<int32_t>& cont = continuations[k];
    ASSERT_FALSE(cont.empty());
    const bool ended = cont.back() == eos;
    std::vector<int32_t> want = prompts[k];
    want.insert(want.end(), cont.begin(), cont.end());
    std::vector<uint8_t> want_mask(prompts[k].size(), 0);
    want_mask.insert(want_mask.end(), cont.size(), 1);
    if (!ended) {
      want.push_back(eos);
      want_mask.push_back(0);
    }
    EXPECT_EQ(out.document(int64_t(k)), want);
    EXPECT_EQ(out.document_mask(int64_t(k)), want_mask);
    EXPECT_EQ(out.document(int64_t(k)).back(), eos);  // closed as every corpus document is
  }
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

void expect_contains(const std::string& text, const std::vector<std::string>& parts) {
  for (const std::string& p : parts) EXPECT_NE(text.find(p), std::string::npos) << "missing '" << p << "' in: " << text;
}
}  // namespace

TEST(GenerateData, GreedyStoreHoldsPromptsAndGenerateContinuationsWithTheirMask) {
  Fixture f("gen_data_greedy");
  GenerateDataOptions o = f.options("greedy.h5");
  o.sampling = SamplingConfig::greedy();
  const GenerateDataStats stats = f.generate(o);

  const TokenStore corpus = TokenStore::open(f.run.store);
  const auto prompts = corpus_prompts(corpus, kPromptTokens, o.documents);
  ASSERT_EQ(prompts.size(), 10u);
  const int32_t eos = corpus.info().eos_id;
  const auto continuations = anvil::generate(*f.model, prompts, kMaxTokens, SamplingConfig::greedy(), eos);
  expect_store_matches(o.output, prompts, continuations, eos);

  const TokenStore out = TokenStore::open(o.output);
  EXPECT_EQ(out.info().tokenizer_hash, corpus.info().tokenizer_hash);
  EXPECT_EQ(out.info().vocab_size, corpus.info().vocab_size);
  EXPECT_EQ(out.info().eos_id, eos);
  int64_t generated = 0;
  std::set<int32_t> distinct;
  for (const auto& c : continuations) {
    generated += int64_t(c.size());
    distinct.insert(c.begin(), c.end());
  }
  EXPECT_EQ(stats.documents, 10);
  EXPECT_EQ(stats.generated_tokens, generated);
  EXPECT_GE(distinct.size(), 5u) << "a degenerate continuation would prove little";

  const auto source = nlohmann::json::parse(out.info().source);
  EXPECT_EQ(source["generated_by"], "anvil data generate");
  EXPECT_EQ(source["checkpoint"], "fresh tiny llama");
  EXPECT_EQ(source["temperature"], 0.0);
  EXPECT_EQ(source["prompt_tokens"], kPromptTokens);
  EXPECT_EQ(source["max_tokens"], kMaxTokens);
  EXPECT_FALSE(fs::exists(o.output + ".tmp"));
}

TEST(GenerateData, SampledStoreEqualsGenerateAndDoesNotDependOnTheBatch) {
  Fixture f("gen_data_sampled");
  GenerateDataOptions o = f.options("sampled_b4.h5");
  o.sampling = SamplingConfig{1.0, 40, 0.95, 5};
  f.generate(o);

  const TokenStore corpus = TokenStore::open(f.run.store);
  const auto prompts = corpus_prompts(corpus, kPromptTokens, o.documents);
  const int32_t eos = corpus.info().eos_id;
  const auto continuations = anvil::generate(*f.model, prompts, kMaxTokens, o.sampling, eos);
  expect_store_matches(o.output, prompts, continuations, eos);

  const TokenStore b4 = TokenStore::open(o.output);
  for (const int64_t batch : {int64_t(1), int64_t(3), int64_t(10), int64_t(64)}) {
    SCOPED_TRACE("batch " + std::to_string(batch));
    GenerateDataOptions ob = o;
    ob.batch = batch;
    ob.output = f.run.dir + "/sampled_b" + std::to_string(batch) + ".h5";
    f.generate(ob);
    const TokenStore other = TokenStore::open(ob.output);
    ASSERT_EQ(other.num_documents(), b4.num_documents());
    for (int64_t d = 0; d < b4.num_documents(); ++d) {
      EXPECT_EQ(other.document(d), b4.document(d)) << "document " << d;
      EXPECT_EQ(other.document_mask(d), b4.document_mask(d)) << "document " << d;
    }
  }
  // The seed is used: another seed draws other continuations.
  GenerateDataOptions o6 = o;
  o6.sampling.seed = 6;
  o6.output = f.run.dir + "/sampled_seed6.h5";
  f.generate(o6);
  const TokenStore seed6 = TokenStore::open(o6.output);
  int differing = 0;
  for (int64_t d = 0; d < b4.num_documents(); ++d) differing += seed6.document(d) != b4.document(d);
  EXPECT_GE(differing, 5);
  const auto source = nlohmann::json::parse(b4.info().source);
  EXPECT_EQ(source["temperature"], 1.0);
  EXPECT_EQ(source["top_k"], 40);
  EXPECT_EQ(source["top_p"], 0.95);
  EXPECT_EQ(source["seed"], 5);
}

// A store whose end-of-document id is the model's first greedy token for prompt 0: that
// continuation is the single token, kept and masked 1, and no second EOS is appended.
TEST(GenerateData, ContinuationStopsAtTheStoresEndOfDocumentToken) {
  Fixture f("gen_data_stop");
  const TokenStore corpus = TokenStore::open(f.run.store);
  const auto prompts = corpus_prompts(corpus, kPromptTokens, 4);
  const int32_t first = anvil::generate(*f.model, {prompts[0]}, 1, SamplingConfig::greedy())[0][0];
  TokenStoreInfo info = corpus.info();
  info.eos_id = first;
  const std::string store = f.run.dir + "/eos_is_first.h5";
  {
    TokenStoreWriter w(store, info);
    for (int64_t d = 0; d < corpus.num_documents(); ++d) w.add_document(corpus.document(d));
    w.finish();
  }
  GenerateDataOptions o = f.options("stop.h5");
  o.input = store;
  o.documents = 4;
  o.sampling = SamplingConfig::greedy();
  const GenerateDataStats stats = f.generate(o);
  const TokenStore out = TokenStore::open(o.output);
  std::vector<int32_t> want = prompts[0];
  want.push_back(first);
  EXPECT_EQ(out.document(0), want);
  std::vector<uint8_t> want_mask(prompts[0].size(), 0);
  want_mask.push_back(1);
  EXPECT_EQ(out.document_mask(0), want_mask);
  EXPECT_GE(stats.ended_by_model, 1);
  expect_store_matches(o.output, prompts, anvil::generate(*f.model, prompts, kMaxTokens, o.sampling, first), first);
}

TEST(GenerateData, ShortDocumentsAreSkippedAndCounted) {
  Fixture f("gen_data_short");
  GenerateDataOptions o = f.options("long_prompts.h5");
  o.prompt_tokens = 40;
  o.max_tokens = 4;
  o.documents = -1;  // all
  o.batch = 16;
  o.sampling = SamplingConfig::greedy();
  const GenerateDataStats stats = f.generate(o);
  const TokenStore corpus = TokenStore::open(f.run.store);
  int64_t skipped = 0;
  const auto prompts = corpus_prompts(corpus, 40, -1, &skipped);
  EXPECT_GT(skipped, 0);
  EXPECT_GT(prompts.size(), 0u);
  EXPECT_EQ(stats.skipped_short, skipped);
  EXPECT_EQ(stats.documents, int64_t(prompts.size()));
  expect_store_matches(o.output, prompts, anvil::generate(*f.model, prompts, 4, o.sampling, corpus.info().eos_id),
                       corpus.info().eos_id);
}

TEST(GenerateData, InterruptedRunLeavesNoStore) {
  Fixture f("gen_data_interrupt");
  GenerateDataOptions o = f.options("interrupted.h5");
  o.sampling = SamplingConfig::greedy();
  int calls = 0;
  EXPECT_THROW(generate_data(*f.model, o, f.tokenizer_hash,
                             [&](int64_t, int64_t, const GenerateDataStats&) {
                               if (++calls == 2) throw Error("interrupted");
                             }),
               Error);
  EXPECT_EQ(calls, 2);
  EXPECT_FALSE(fs::exists(o.output));
  EXPECT_FALSE(fs::exists(o.output + ".tmp"));
}

TEST(GenerateData, BadInputIsRefusedBeforeWorkNamingTheFlag) {
  Fixture f("gen_data_bad");
  const TokenStore corpus = TokenStore::open(f.run.store);
  auto refused = [&](GenerateDataOptions o, const std::vector<std::string>& parts,
                     const std::optional<std::string>& hash) {
    expect_contains(error_of([&] { generate_data(*f.model, o, hash); }), parts);
    EXPECT_FALSE(fs::exists(o.output + ".tmp"));
  };
  const GenerateDataOptions good = f.options("bad.h5");

  GenerateDataOptions o = good;
  o.max_tokens = 60;  // 8 + 60 > 64 positions
  refused(o, {"--prompt-tokens", "--max-tokens", "max_position_embeddings = 64", "lower --max-tokens to 56"},
          f.tokenizer_hash);
  EXPECT_FALSE(fs::exists(o.output));

  // No document longer than the prompt.
  o = good;
  o.input = f.run.dir + "/short_docs.h5";
  {
    TokenStoreWriter w(o.input, corpus.info());
    for (int d = 0; d < 3; ++d) w.add_document(std::vector<int32_t>(kPromptTokens, corpus.info().eos_id));
    w.finish();
  }
  refused(o, {"none of the 3 documents", "--prompt-tokens 8", "lower --prompt-tokens"}, f.tokenizer_hash);
  EXPECT_FALSE(fs::exists(o.output));

  o = good;
  o.output = f.run.store;
  refused(o, {"--output", "is the --input store"}, f.tokenizer_hash);

  // An existing output needs --force, which replaces it.
  o = good;
  o.output = f.run.dir + "/forced.h5";
  o.sampling = SamplingConfig::greedy();
  o.documents = 2;
  f.generate(o);
  refused(o, {"--output", "already exists", "--force"}, f.tokenizer_hash);
  o.force = true;
  o.documents = 3;
  f.generate(o);
  EXPECT_EQ(TokenStore::open(o.output).num_documents(), 3);

  // A store made with another tokenizer.
  refused(good, {f.run.store, "tokenizer", "sha256:other"}, std::string("sha256:other"));

  // A store whose vocabulary is larger than the model's.
  TokenStoreInfo big = corpus.info();
  big.vocab_size = 1000;
  o = good;
  o.input = f.run.dir + "/big_vocab.h5";
  {
    TokenStoreWriter w(o.input, big);
    w.add_document(corpus.document(0));
    w.finish();
  }
  refused(o, {"--input", "vocab_size 1000", "vocab_size is 512"}, std::nullopt);

  // An empty store.
  o = good;
  o.input = f.run.dir + "/empty.h5";
  TokenStoreWriter(o.input, corpus.info()).finish();
  refused(o, {"--input", "has no documents", "anvil data prepare"}, f.tokenizer_hash);

  o = good;
  o.batch = 0;
  refused(o, {"--batch"}, f.tokenizer_hash);
  o = good;
  o.sampling.top_p = 0;
  refused(o, {"top_p"}, f.tokenizer_hash);
}

// The CLI: a checkpoint trained two steps, `anvil data generate` prints progress and writes the
// store generate_data writes for the same settings, and `anvil train` (task sft, which needs
// the loss mask) trains on it.
TEST(GenerateData, CliWritesTheStoreTheTrainerReads) {
  const TinyRun run = make_tiny_run("gen_data_cli");
  const std::string short_run = " --set training.steps=2 --set schedule.warmup_steps=1 --set training.eval_every=0";
  must_run(kAnvil + " train " + run.config + short_run);
  const std::string out = run.dir + "/gen.h5";
  auto command = [&](const std::string& output, const std::string& documents, const std::string& max_tokens,
                     const std::string& batch) {
    return kAnvil + " data generate --checkpoint " + run.dir + "/run --input " + run.store + " --output " + output +
           " --prompt-tokens 8 --max-tokens " + max_tokens + " --documents " + documents + " --batch " + batch +
           " --temperature 1 --top-k 50 --seed 3";
  };
  const std::string printed = must_run(command(out, "6", "8", "4"));
  expect_contains(printed, {"data generate: 4/6 prompts", "data generate: 6/6 prompts", "wrote " + out,
                            "6 documents"});
  const TokenStore store = TokenStore::open(out);
  EXPECT_EQ(store.num_documents(), 6);
  EXPECT_TRUE(store.has_loss_mask());
  EXPECT_EQ(nlohmann::json::parse(store.info().source)["top_k"], 50);

  // The same as the library with --batch 1, through the CLI.
  const std::string out1 = run.dir + "/gen_b1.h5";
  must_run(command(out1, "6", "8", "1"));
  const TokenStore one = TokenStore::open(out1);
  for (int64_t d = 0; d < 6; ++d) EXPECT_EQ(one.document(d), store.document(d)) << d;

  std::string output;
  EXPECT_NE(run_command(command(out, "6", "8", "4"), output), 0);
  expect_contains(output, {"error:", "--output", "already exists", "--force"});
  const std::string fresh = run.dir + "/never.h5";
  EXPECT_NE(run_command(command(fresh, "lots", "8", "4"), output), 0);
  expect_contains(output, {"--documents 'lots'", "all"});
  EXPECT_NE(run_command(command(fresh, "all", "100", "4"), output), 0);
  expect_contains(output, {"--prompt-tokens 8 + --max-tokens 100", "max_position_embeddings = 64"});
  EXPECT_FALSE(fs::exists(fresh));

  must_run(kAnvil + " train " + run.config + short_run + " --set data.train=" + out + " --set task.name=sft " +
           "--set data.valid_fraction=0 --set run.out_dir=" + run.dir + "/sft");
  std::ifstream metrics(run.dir + "/sft/metrics.jsonl");
  const std::string first_line((std::istreambuf_iterator<char>(metrics)), std::istreambuf_iterator<char>());
  EXPECT_NE(first_line.find("response_tokens"), std::string::npos) << first_line;
}
