#include "models/layout_checks.h"

#include "parallel/ulysses.h"

namespace anvil {

int64_t model_experts(const ModelConfig&) { return 0; }

void validate_layout(const GridDims& dims, const ModelConfig& m) {
  auto divides = [](int degree, int64_t n, const char* axis, const char* field) {
    ANVIL_CHECK(n % degree == 0, "parallel.", axis, " = ", degree, " does not divide ", field, " = ", n,
                " — pick a degree that divides it");
  };
  divides(dims.tp, m.num_attention_heads, "tp", "num_attention_heads");
  divides(dims.tp, m.num_key_value_heads, "tp", "num_key_value_heads");
  divides(dims.tp, m.intermediate_size, "tp", "intermediate_size");
  divides(dims.tp, m.vocab_size, "tp", "vocab_size");
  // Ulysses hands each sp rank whole KV heads of its tp rank's shard (with their query heads).
  const int64_t kv_per_tp = m.num_key_value_heads / dims.tp;
  ANVIL_CHECK(kv_per_tp % dims.sp == 0, "parallel.sp = ", dims.sp, dims.sp > kv_per_tp ? " exceeds" : " does not divide",
              " the ", kv_per_tp, " KV heads of each tp rank (num_key_value_heads = ", m.num_key_value_heads,
              " over tp = ", dims.tp, ") — Ulysses sequence parallelism gives every sp rank whole KV heads for the "
              "full sequence, so sp must divide num_key_value_heads / tp = ", kv_per_tp, " (at most ", kv_per_tp,
              "). Use sp in {", ulysses_sp_degrees(kv_per_tp), "} and put the other ranks on dp",
              dims.tp > 1 ? ", or lower tp to leave more KV heads per tp rank" : "");
  // Stage s owns layers [s*L/pp, (s+1)*L/pp): equal contiguous ranges, each at least one layer.
  ANVIL_CHECK(m.num_hidden_layers % dims.pp == 0, "parallel.pp = ", dims.pp, " does not divide num_hidden_layers = ",
              m.num_hidden_layers, " — pipeline stages own equal ranges of layers, so pick a pp that divides ",
              m.num_hidden_layers);
  // Expert parallelism splits a MoE layer's experts over the ep ranks carved out of dp.
  if (dims.ep > 1) {
    const int64_t experts = model_experts(m);
    ANVIL_CHECK(experts > 0, "parallel.ep = ", dims.ep, " but the model (", m.model_type,
                ") is dense: it has no experts to split — set parallel.ep: 1 and keep those ranks on parallel.dp");
    divides(dims.ep, experts, "ep", "the number of experts");
  }
  check_expert_degree(dims);
}

}  // namespace anvil
