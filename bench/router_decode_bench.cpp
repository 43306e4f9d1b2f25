// Real prefill and decode speed of routed models (issue 18) against their unrouted backbone, in
// one process, on the same prompts and threads: each repeat times every model back to back
// (base, routed 1, routed 2, ...), so a busy machine slows them alike; medians over the repeats.
//   prefill: one forward_cached of B prompts of P tokens (the logits of the last position only),
//            the median of 3, summed over K such batches per repeat;
//   decode:  N greedy steps of B rows after each prefill (one token per row per step), summed.
// Prompts: the first P tokens of K * B held-out documents of the base's data.train (its validation
// split), so the routers see real text and the timing covers as many of their decisions as the
// validation skip ratio does (one prompt is one sample of a per-sequence decision). Also reports how
// many of a routed model's greedy tokens equal the base's (a quick quality signal beside the
// validation loss).
// Built into build/bin by bench/CMakeLists.txt; bench/run_router_bench.sh runs it.
//   router_decode_bench --base CKPT [--routed CKPT]... [--batch B] [--prompts K] [--prompt-tokens P]
//                       [--new-tokens N] [--repeats R] [--json OUT]
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/loader.h"
#include "data/token_store.h"
#include "trainer/load_model.h"

using namespace anvil;
using Clock = std::chrono::steady_clock;

namespace {

struct Args {
  std::string base, json;
  std::vector<std::string> routed;
  int64_t batch = 1, prompt_batches = 8, prompt_tokens = 128, new_tokens = 64, repeats = 3;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    ANVIL_CHECK(i + 1 < argc, "router_decode_bench: ", k, " needs a value");
    const std::string v = argv[++i];
    if (k == "--base") a.base = v;
    else if (k == "--routed") a.routed.push_back(v);
    else if (k == "--json") a.json = v;
    else if (k == "--batch") a.batch = std::atoll(v.c_str());
    else if (k == "--prompts") a.prompt_batches = std::atoll(v.c_str());
    else if (k == "--prompt-tokens") a.prompt_tokens = std::atoll(v.c_str());
    else if (k == "--new-tokens") a.new_tokens = std::atoll(v.c_str());
    else if (k == "--repeats") a.repeats = std::atoll(v.c_str());
    else ANVIL_CHECK(false, "router_decode_bench: unknown flag ", k, " — use --base, --routed, --batch, --prompts, --prompt-tokens, "
                     "--new-tokens, --repeats, --json");
  }
  ANVIL_CHECK(!a.base.empty(), "router_decode_bench: --base CKPT (the unrouted backbone) is required");
  ANVIL_CHECK(a.batch >= 1 && a.prompt_batches >= 1 && a.prompt_tokens >= 1 && a.new_tokens >= 1 && a.repeats >= 1,
              "router_decode_bench: --batch, --prompts, --prompt-tokens, --new-tokens and --repeats must be >= 1");
  return a;
}

// The first P tokens of the first B held-out documents longer than P.
std::vector<int32_t> held_out_prompts(const LoadedModel& base, int64_t B, int64_t P) {
  const RunConfig& cfg = base.config;
  ANVIL_CHECK(!cfg.data.train.empty() && cfg.data.train != "none", "router_decode_bench: ", base.source,
              " names no data.train to take prompts from");
  const TokenStore store = TokenStore::open(cfg.data.train);
  std::vector<int64_t> docs = split_documents(store.num_documents(), cfg.data.valid_fraction,
                                              static_cast<uint64_t>(cfg.run.seed), Split::Valid);
  if (docs.empty())
    for (int64_t d = 0; d < store.num_documents(); ++d) docs.push_back(d);
  std::vector<int32_t> ids;
  for (int64_t d : docs) {
    if (static_cast<int64_t>(ids.size()) == B * P) break;
    const std::vector<int32_t> doc = store.document(d);
    if (static_cast<int64_t>(doc.size()) > P) ids.insert(ids.end(), doc.begin(), doc.begin() + P);
  }
  ANVIL_CHECK(static_cast<int64_t>(ids.size()) == B * P, "router_decode_bench: ", cfg.data.train, " has fewer than ",
              B, " held-out documents longer than ", P, " tokens — lower --batch or --prompt-tokens");
  return ids;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

struct Timing {
  double prefill_seconds = 0, decode_seconds = 0;
  std::vector<int32_t> tokens;  // [K, N, B] greedy tokens
};

// One batch of B prompts (prompt_ids: B * P): prefill and N greedy steps, added to t.
void time_batch(TransformerLM& model, const std::vector<int32_t>& prompt_ids, int64_t B, int64_t P, int64_t N,
                Timing& t) {
  const int64_t V = model.config().vocab_size;
  KVCache kv(model.config(), B, P + N, model.device(), model.compute_dtype());
  const Tensor ids = Tensor::from_vector(prompt_ids, {B, P}).to(model.device());
  // A short prefill is easily hit by a context switch on a busy machine: the median of 3.
  Tensor logits;
  std::vector<double> prefills;
  for (int k = 0; k < 3; ++k) {
    kv.reset();
    const Clock::time_point t0 = Clock::now();
    logits = host_f32(model.forward_cached(ids, kv, /*last_position_only=*/true));
    prefills.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  t.prefill_seconds += median(prefills);
  Clock::time_point t0;
  std::vector<int32_t> next(static_cast<size_t>(B));
  t0 = Clock::now();
  for (int64_t s = 0; s < N; ++s) {
    for (int64_t b = 0; b < B; ++b) {
      const float* z = logits.data<float>() + b * V;
      next[b] = static_cast<int32_t>(std::max_element(z, z + V) - z);
    }
    t.tokens.insert(t.tokens.end(), next.begin(), next.end());
    if (s + 1 == N) break;
    logits = host_f32(model.forward_cached(Tensor::from_vector(next, {B, 1}).to(model.device()), kv));
  }
  t.decode_seconds += std::chrono::duration<double>(Clock::now() - t0).count();
}

// K = prompts.size() / (B * P) batches, one after another.
Timing time_model(TransformerLM& model, const std::vector<int32_t>& prompts, int64_t B, int64_t P, int64_t N) {
  Timing t;
  const size_t per_batch = static_cast<size_t>(B * P);
  for (size_t k = 0; k + per_batch <= prompts.size(); k += per_batch)
    time_batch(model, std::vector<int32_t>(prompts.begin() + k, prompts.begin() + k + per_batch), B, P, N, t);
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args a = parse(argc, argv);
    std::vector<std::string> paths = {a.base};  // as given (the summary matches them to its runs)
    paths.insert(paths.end(), a.routed.begin(), a.routed.end());
    std::vector<LoadedModel> models;
    for (const std::string& path : paths) models.push_back(load_model(path));
    if (models[0].config.run.threads > 0) omp_set_num_threads(static_cast<int>(models[0].config.run.threads));
    const int64_t B = a.batch, K = a.prompt_batches, P = a.prompt_tokens, N = a.new_tokens;
    for (const LoadedModel& m : models)
      ANVIL_CHECK(P + N <= m.model->config().max_position_embeddings, "router_decode_bench: --prompt-tokens ", P,
                  " + --new-tokens ", N, " exceed ", m.source, "'s ", m.model->config().max_position_embeddings,
                  " positions");
    const std::vector<int32_t> prompts = held_out_prompts(models[0], K * B, P);
    {  // untimed warm-up (thread pool, first allocations): the first 4 tokens of each prompt, 2 steps
      const int64_t w = std::min<int64_t>(P, 4);
      std::vector<int32_t> warm;
      for (int64_t b = 0; b < B; ++b) warm.insert(warm.end(), prompts.begin() + b * P, prompts.begin() + b * P + w);
      for (LoadedModel& m : models) time_model(*m.model, warm, B, w, 2);
    }
    std::vector<std::vector<double>> prefill(models.size()), decode(models.size());
    std::vector<Timing> last(models.size());
    for (int64_t r = 0; r < a.repeats; ++r)
      for (size_t i = 0; i < models.size(); ++i) {
        last[i] = time_model(*models[i].model, prompts, B, P, N);
        prefill[i].push_back(K * B * P / last[i].prefill_seconds);
        decode[i].push_back(K * B * N / last[i].decode_seconds);
      }
    const int threads = omp_get_max_threads();
    std::printf("router decode bench: %ld batches of %ld held-out prompts, %ld prompt tokens, %ld new tokens, median of "
                "%ld repeats, %d threads\n", long(K), long(B), long(P), long(N), long(a.repeats), threads);
    std::printf("%-60s %12s %12s %9s %9s %8s\n", "model", "prefill t/s", "decode t/s", "prefill x", "decode x",
                "greedy=");
    nlohmann::json rows = nlohmann::json::array();
    for (size_t i = 0; i < models.size(); ++i) {
      const double pf = median(prefill[i]), dc = median(decode[i]);
      const double pf_x = pf / median(prefill[0]), dc_x = dc / median(decode[0]);
      int64_t same = 0;
      for (size_t k = 0; k < last[i].tokens.size(); ++k) same += last[i].tokens[k] == last[0].tokens[k];
      const double agree = static_cast<double>(same) / static_cast<double>(last[i].tokens.size());
      std::printf("%-60s %12.1f %12.1f %8.3fx %8.3fx %8.3f\n", models[i].source.c_str(), pf, dc, pf_x, dc_x, agree);
      rows.push_back({{"path", paths[i]},
                      {"checkpoint", models[i].source},
                      {"base", i == 0},
                      {"prefill_tokens_per_second", pf},
                      {"decode_tokens_per_second", dc},
                      {"prefill_speedup", pf_x},
                      {"decode_speedup", dc_x},
                      {"prefill_samples", prefill[i]},
                      {"decode_samples", decode[i]},
                      {"greedy_agreement_with_base", agree}});
    }
    if (!a.json.empty()) {
      std::ofstream out(a.json);
      ANVIL_CHECK(out.good(), "router_decode_bench: cannot write --json ", a.json);
      out << nlohmann::json({{"batch", B}, {"prompt_batches", K}, {"prompt_tokens", P}, {"new_tokens", N}, {"repeats", a.repeats},
                             {"threads", threads}, {"models", rows}}).dump(2) << "\n";
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
