#include "eval/perplexity.h"

#include <algorithm>
#include <cmath>

namespace anvil {

int64_t evaluation_batches(const Loader& loader, int64_t batches) {
  return std::max<int64_t>(1, std::min(batches, loader.num_samples() / std::max<int64_t>(1, loader.global_batch())));
}

double mean_loss(TransformerLM& model, Loader& loader, int64_t batches, int ignore_index) {
  loader.reset();
  const int64_t n = evaluation_batches(loader, batches);
  double total = 0;
  for (int64_t i = 0; i < n; ++i) {
    const Batch batch = loader.next();
    Cache c;  // dropped at once: nothing runs backward
    total += model.forward_loss(batch.ids.to(model.device()), batch.targets.to(model.device()), c, ignore_index);
  }
  return total / static_cast<double>(n);
}

double unigram_entropy(const TokenStore& store, const std::vector<int64_t>& documents) {
  std::vector<int64_t> counts(store.info().vocab_size, 0);
  int64_t total = 0;
  for (int64_t doc : documents) {
    const int64_t begin = store.doc_offsets()[doc], end = store.doc_offsets()[doc + 1];
    for (int64_t i = begin; i < end; ++i) ++counts[store.token(i)];
    total += end - begin;
  }
  double h = 0;
  for (int64_t c : counts)
    if (c > 0) {
      const double p = static_cast<double>(c) / static_cast<double>(total);
      h -= p * std::log(p);
    }
  return h;
}

}  // namespace anvil
