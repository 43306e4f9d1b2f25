// On-policy rows for task distill: which micro-batches, their sampling seeds, their rows (on_policy.h).
#include "trainer/on_policy.h"

#include <algorithm>

#include "core/rng.h"

namespace anvil {

bool on_policy_micro_batch(uint64_t seed, int64_t step, int64_t m, double fraction) {
  if (fraction <= 0) return false;
  const PhiloxStream stream(seed, stream_id("distill-on-policy"), static_cast<uint32_t>(step));
  return static_cast<double>(stream.uniform(static_cast<uint64_t>(m))) < fraction;
}

SamplingConfig on_policy_sampling(const RunConfig& config, int64_t step, int64_t m) {
  const PhiloxStream stream(config.run.seed, stream_id("distill-on-policy-seed"), static_cast<uint32_t>(step));
  const PhiloxBlock words = stream.block(static_cast<uint64_t>(m));
  SamplingConfig sampling;
  sampling.temperature = config.distill.temperature;
  sampling.top_k = config.distill.top_k;
  sampling.top_p = config.distill.top_p;
  sampling.seed = (static_cast<uint64_t>(words[0]) << 32) | words[1];
  return sampling;
}

Batch on_policy_rows(TransformerLM& drafter, const Batch& data, const SamplingConfig& sampling, uint32_t first_row,
                     int32_t ignore_index) {
  const Tensor ids = data.ids.to(Device::cpu()).contiguous();
  const int64_t B = ids.size(0), T = ids.size(1), P = T / 2;
  ANVIL_CHECK(P >= 1, "distill.on_policy: data.seq_len = ", T, " leaves no prompt — use data.seq_len >= 2");
  const int32_t* source = ids.data<int32_t>();
  std::vector<std::vector<int32_t>> prompts(B);
  for (int64_t i = 0; i < B; ++i) prompts[i].assign(source + i * T, source + i * T + P);
  // No stop token: every row gets exactly T − P sampled tokens.
  const std::vector<std::vector<int32_t>> sampled =
      generate(drafter, prompts, static_cast<int>(T - P), sampling, std::nullopt, first_row);
  Batch rows;  // plain causal rows: no documents
  rows.ids = Tensor::empty({B, T}, DType::I32);
  rows.targets = Tensor::empty({B, T}, DType::I32);
  int32_t* out = rows.ids.data<int32_t>();
  int32_t* targets = rows.targets.data<int32_t>();
  for (int64_t i = 0; i < B; ++i) {
    int32_t* row = out + i * T;
    std::copy(prompts[i].begin(), prompts[i].end(), row);
    std::copy(sampled[i].begin(), sampled[i].end(), row + P);
    for (int64_t t = 0; t < T; ++t)
      targets[i * T + t] = t >= P - 1 && t + 1 < T ? row[t + 1] : ignore_index;  // only sampled tokens are scored
  }
  return rows;
}

}  // namespace anvil
