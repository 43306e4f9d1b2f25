// `anvil data generate`: target-generated continuations of corpus prompts, written as a
// token store (data/token_store.h) the trainer reads, e.g. for hard-label distillation on
// the target's own text.
//
// Prompts: the first `prompt_tokens` tokens of each input document, in store order. A document
// needs at least prompt_tokens + 1 tokens (so the prompt never holds its closing
// end-of-document token); shorter ones are skipped and counted. `documents` caps how many
// prompts are used (the first that are long enough; the scan stops there).
// Continuations: generate() (eval/generate.h) with the given sampling config, up to
// `max_tokens` tokens, stopping at the store's end-of-document id. Prompt k (0-based among the
// used documents) draws from sampling stream k whatever the batch, so the output does not depend
// on `batch`, and equals one generate() call over all the prompts.
// Output document: prompt + continuation, closed by the end-of-document id as the corpus is (it
// is appended when the model did not emit it within max_tokens). Loss mask: 1 exactly on the
// tokens the model generated (an emitted end-of-document token included), 0 on the prompt and
// on an appended end-of-document token. The tokenizer hash, vocab_size and eos_id are the input
// store's; the generation settings are recorded as JSON in the store's `source` attribute.
// The store is written to OUTPUT.tmp and renamed at the end (TokenStoreWriter), so an
// interrupted run leaves no store behind.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "eval/generate.h"

namespace anvil {

struct GenerateDataOptions {
  std::string input;            // corpus token store
  std::string output;           // store to write
  int64_t prompt_tokens = 64;
  int max_tokens = 128;         // new tokens per prompt, at most
  int64_t documents = -1;       // prompts to use; -1: every document long enough
  int64_t batch = 16;           // prompts decoded together (does not change the output)
  SamplingConfig sampling;
  bool force = false;           // replace an existing output
  std::string checkpoint;       // the model's source, recorded in the output
};

struct GenerateDataStats {
  int64_t documents = 0;         // written
  int64_t skipped_short = 0;     // input documents with fewer than prompt_tokens + 1 tokens
  int64_t generated_tokens = 0;  // tokens the model produced (loss mask 1)
  int64_t ended_by_model = 0;    // continuations that ended with the model's end-of-document token
  double seconds = 0;
};

// Called after each batch with the prompts done so far and the total.
using GenerateDataProgress = std::function<void(int64_t done, int64_t total, const GenerateDataStats&)>;

// Checks everything first (flags, output path, input store, the model's vocabulary and
// positions, and, when `model_tokenizer_hash` is given, that the store was made with the
// model's tokenizer), then generates and writes. Errors name the flag and the fix.
GenerateDataStats generate_data(TransformerLM& model, const GenerateDataOptions& options,
                                const std::optional<std::string>& model_tokenizer_hash,
                                const GenerateDataProgress& progress = {});

// The JSON recorded as the output store's `source` attribute.
std::string generate_data_source(const GenerateDataOptions& options);

}  // namespace anvil
