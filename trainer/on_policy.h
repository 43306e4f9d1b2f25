// On-policy distillation (DistillSpec, Zhou et al. 2023; issue 14): a share distill.on_policy of
// each training step's micro-batches are continuations sampled from the CURRENT drafter and
// scored by the target, so the drafter learns on the text it will itself propose.
//
// Which micro-batches: micro-batch m of the step after `step` done steps is on-policy iff the
// Philox uniform of (run.seed, stream "distill-on-policy", step) at index m is < on_policy.
// Its rows: the data window's first T/2 tokens are the prompt, the drafter (no gradient, its
// KV cache) samples the remaining T − T/2 at distill.temperature / top_k / top_p; global row r
// of the step's global micro-batch draws from generate()'s sampling stream r under a seed
// derived from (run.seed, step, m). Every choice is a function of (seed, step, m, global row),
// so a resumed run and any dp layout sample the same rows.
#pragma once
#include <cstdint>

#include "data/loader.h"
#include "eval/generate.h"
#include "trainer/config.h"

namespace anvil {

// Whether micro-batch m of the step after `step` done steps is sampled from the drafter.
bool on_policy_micro_batch(uint64_t seed, int64_t step, int64_t m, double fraction);

// generate()'s sampling for micro-batch m of that step: distill's temperature, top_k and top_p,
// and a seed drawn from (run.seed, step, m).
SamplingConfig on_policy_sampling(const RunConfig& config, int64_t step, int64_t m);

// The on-policy rows of a data batch (host, [B, T], T >= 2): row i keeps the data's first T/2
// tokens and continues with T − T/2 tokens the drafter samples (sampling stream first_row + i);
// targets: the next token at positions [T/2 − 1, T − 1) — exactly the sampled tokens — and
// ignore_index elsewhere. Plain causal rows: document boundaries of packed data are dropped.
Batch on_policy_rows(TransformerLM& drafter, const Batch& data, const SamplingConfig& sampling, uint32_t first_row,
                     int32_t ignore_index);

}  // namespace anvil
