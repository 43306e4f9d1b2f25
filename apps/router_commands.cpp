// `anvil eval --routers` and the loading of `anvil generate --routers` (see router_commands.h).
#include "apps/router_commands.h"

#include <cmath>
#include <cstdio>
#include <memory>

#include <omp.h>

#include "data/tokenizer.h"
#include "eval/perplexity.h"
#include "trainer/router_backbone.h"
#include "trainer/trainer.h"

namespace anvil {

LoadedModel load_router_flags(const std::string& routers, const std::string& backbone,
                              const std::vector<std::string>& overrides) {
  LoadModelOptions options;
  options.overrides = overrides;
  return load_routed_model(routers, backbone, options);
}

RoutedEvaluation evaluate_routed(TransformerLM& model, Loader& loader, int64_t batches, int ignore_index) {
  loader.reset();
  const int64_t n = evaluation_batches(loader, batches);
  RoutedEvaluation out;
  double total = 0, gate_sum = 0, units = 0;
  for (int64_t i = 0; i < n; ++i) {
    const Batch batch = loader.next();
    Cache c;  // dropped at once: nothing runs backward
    auto context = std::make_shared<StepContext>();  // the routers report their gates here
    c.set_context(context);
    total += model.forward_loss(batch.ids.to(model.device()), batch.targets.to(model.device()), c, ignore_index);
    gate_sum += context->router_stats.gate_sum;
    units += context->router_stats.units;
  }
  out.loss = total / static_cast<double>(n);
  out.capacity = units > 0 ? gate_sum / units : 1.0;
  return out;
}

int run_eval_routers(const std::string& routers, const std::string& backbone, int64_t batches,
                     const std::vector<std::string>& overrides) {
  const LoadedModel loaded = load_router_flags(routers, backbone, overrides);
  const RunConfig& cfg = loaded.config;
  if (cfg.run.threads > 0) omp_set_num_threads(static_cast<int>(cfg.run.threads));
  ANVIL_CHECK(cfg.data.train != "none", "evaluation needs data: ", routers, " names no token store (data.train is "
              "none) — pass --set data.train=path/to/tokens.h5");
  ANVIL_CHECK(cfg.data.valid_fraction > 0, "evaluation needs a validation split — set data.valid_fraction > 0");
  auto store = std::make_shared<const TokenStore>(TokenStore::open(cfg.data.train));
  store->check_tokenizer(Tokenizer::load(cfg.tokenizer.path).hash_hex());
  Loader valid(store, loader_config(cfg), Split::Valid);
  const RoutedEvaluation e =
      evaluate_routed(*loaded.model, valid, batches, static_cast<int>(cfg.training.ignore_index));
  std::printf("step %ld: validation loss %.4f, perplexity %.3f, capacity %.4f (%zu router layers, backbone %s)\n",
              long(loaded.step), e.loss, std::exp(e.loss), e.capacity,
              loaded.model->routers() ? loaded.model->routers()->layers.size() : size_t(0),
              cfg.model.init_from.c_str());
  return 0;
}

}  // namespace anvil
