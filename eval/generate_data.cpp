// generate_data: prompts from a token store -> generate() in batches -> a new token store
// with the continuations marked in its loss mask (see generate_data.h).
#include "eval/generate_data.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <system_error>

#include "core/error.h"
#include "data/token_store.h"

namespace anvil {

namespace {

namespace fs = std::filesystem;

void check_options(const GenerateDataOptions& o) {
  ANVIL_CHECK(o.prompt_tokens >= 1, "data generate: --prompt-tokens ", o.prompt_tokens,
              " — give at least 1 (the prompt is the start of each corpus document)");
  ANVIL_CHECK(o.max_tokens >= 1, "data generate: --max-tokens ", o.max_tokens, " — give at least 1");
  ANVIL_CHECK(o.documents == -1 || o.documents >= 1, "data generate: --documents ", o.documents,
              " — give a positive count or `all`");
  ANVIL_CHECK(o.batch >= 1, "data generate: --batch ", o.batch, " — give at least 1");
  o.sampling.validate();
  ANVIL_CHECK(!o.output.empty(), "data generate: --output is empty — give the store to write, e.g. gen.h5");
  std::error_code ec;
  ANVIL_CHECK(!fs::exists(o.input, ec) || !fs::exists(o.output, ec) || !fs::equivalent(o.input, o.output, ec),
              "data generate: --output ", o.output, " is the --input store — write to another file");
  ANVIL_CHECK(o.force || !fs::exists(o.output, ec), "data generate: --output ", o.output,
              " already exists — choose a new path, or pass --force to replace it");
}

void check_model(const TransformerLM& model, const TokenStore& store, const GenerateDataOptions& o,
                 const std::optional<std::string>& model_tokenizer_hash) {
  const ModelConfig& mc = model.config();
  if (model_tokenizer_hash) store.check_tokenizer(*model_tokenizer_hash);
  ANVIL_CHECK(mc.vocab_size >= store.info().vocab_size, "data generate: --input ", o.input, " has vocab_size ",
              store.info().vocab_size, " but the --checkpoint model's vocab_size is ", mc.vocab_size,
              " — use the store prepared with the model's tokenizer");
  const int64_t positions = o.prompt_tokens + o.max_tokens;
  ANVIL_CHECK(positions <= mc.max_position_embeddings, "data generate: --prompt-tokens ", o.prompt_tokens,
              " + --max-tokens ", o.max_tokens, " = ", positions, " positions, more than the model's ",
              "max_position_embeddings = ", mc.max_position_embeddings, " — lower --max-tokens to ",
              std::max<int64_t>(0, mc.max_position_embeddings - o.prompt_tokens), " or --prompt-tokens");
}

}  // namespace

std::string generate_data_source(const GenerateDataOptions& o) {
  const nlohmann::json j = {{"generated_by", "anvil data generate"},
                            {"checkpoint", o.checkpoint},
                            {"input", o.input},
                            {"prompt_tokens", o.prompt_tokens},
                            {"max_tokens", o.max_tokens},
                            {"temperature", o.sampling.temperature},
                            {"top_k", o.sampling.top_k},
                            {"top_p", o.sampling.top_p},
                            {"seed", o.sampling.seed}};
  return j.dump();
}

GenerateDataStats generate_data(TransformerLM& model, const GenerateDataOptions& options,
                                const std::optional<std::string>& model_tokenizer_hash,
                                const GenerateDataProgress& progress) {
  const auto t0 = std::chrono::steady_clock::now();
  check_options(options);
  const TokenStore store = TokenStore::open(options.input);
  ANVIL_CHECK(store.num_documents() > 0, "data generate: --input ", options.input,
              " has no documents — prepare a corpus with `anvil data prepare`");
  check_model(model, store, options, model_tokenizer_hash);

  // The prompts: the first prompt_tokens tokens of the documents long enough, in store order.
  GenerateDataStats stats;
  std::vector<std::vector<int32_t>> prompts;
  const std::vector<int64_t>& offsets = store.doc_offsets();
  for (int64_t d = 0; d < store.num_documents(); ++d) {
    if (options.documents >= 0 && static_cast<int64_t>(prompts.size()) == options.documents) break;
    if (offsets[d + 1] - offsets[d] < options.prompt_tokens + 1) {
      ++stats.skipped_short;
      continue;
    }
    std::vector<int32_t> prompt(static_cast<size_t>(options.prompt_tokens));
    store.copy_tokens(offsets[d], options.prompt_tokens, prompt.data());
    prompts.push_back(std::move(prompt));
  }
  ANVIL_CHECK(!prompts.empty(), "data generate: none of the ", store.num_documents(), " documents of --input ",
              options.input, " has more than --prompt-tokens ", options.prompt_tokens,
              " tokens — lower --prompt-tokens");
  ANVIL_CHECK(prompts.size() <= std::numeric_limits<uint32_t>::max(), "data generate: ", prompts.size(),
              " prompts are more than the 2^32 sampling streams — lower --documents");

  TokenStoreInfo info = store.info();
  info.source = generate_data_source(options);
  const int32_t eos = info.eos_id;
  TokenStoreWriter writer(options.output, info);
  const int64_t total = static_cast<int64_t>(prompts.size());
  std::vector<std::vector<int32_t>> batch;
  std::vector<int32_t> tokens;
  std::vector<uint8_t> mask;
  for (int64_t first = 0; first < total; first += options.batch) {
    const int64_t n = std::min(options.batch, total - first);
    batch.assign(prompts.begin() + first, prompts.begin() + first + n);
    const auto continuations = generate(model, batch, options.max_tokens, options.sampling, eos,
                                        static_cast<uint32_t>(first));
    for (int64_t i = 0; i < n; ++i) {
      const std::vector<int32_t>& cont = continuations[i];
      for (const int32_t t : cont)
        ANVIL_CHECK(t < info.vocab_size, "data generate: the model sampled token ", t, " for prompt ", first + i,
                    ", outside the --input store's vocabulary [0, ", info.vocab_size,
                    ") — the model's vocabulary is larger than its tokenizer's; use a checkpoint whose "
                    "vocab_size matches the store");
      tokens = batch[i];
      tokens.insert(tokens.end(), cont.begin(), cont.end());
      mask.assign(batch[i].size(), 0);
      mask.insert(mask.end(), cont.size(), 1);
      const bool ended = !cont.empty() && cont.back() == eos;
      if (!ended) {  // closed like every corpus document; not the model's token, so not a target
        tokens.push_back(eos);
        mask.push_back(0);
      }
      writer.add_document(tokens, &mask);
      stats.generated_tokens += static_cast<int64_t>(cont.size());
      stats.ended_by_model += ended ? 1 : 0;
      ++stats.documents;
    }
    stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (progress) progress(first + n, total, stats);
  }
  writer.finish();
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return stats;
}

}  // namespace anvil
