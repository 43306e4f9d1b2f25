#include "trainer/quant.h"

#include "core/allocator.h"
#include "parallel/communicator.h"
#include "parallel/data_parallel.h"
#include "trainer/lora.h"

namespace anvil {

bool quant_matches(const QuantSection& quant, const std::string& module) {
  for (const std::string& pattern : quant.skip)
    if (lora_pattern_matches(pattern, module)) return false;
  for (const std::string& pattern : quant.modules)
    if (lora_pattern_matches(pattern, module)) return true;
  return false;
}

namespace {
// The whole logical dense weight of `lw`, on the CPU in f32: this rank's shard placed into zeros and
// summed over tp (each element comes from exactly one rank, so the sum is exact).
Tensor full_dense_weight(LinearWeight& lw, Communicator* tp) {
  const Param& w = lw.weight();
  const Tensor local = master_weight(w).to(Device::cpu()).to(DType::F32);
  if (!w.shard.sharded()) return local;
  ANVIL_CHECK(tp, w.name, " is split but no tensor-parallel communicator was given");
  Tensor full = Tensor::zeros(logical_shape(w));
  place_shard(w, local, full);
  tp->all_reduce(full);
  return full;
}
}  // namespace

void quantize_model(TransformerLM& model, const RunConfig& config, Communicator* tp, Communicator* pp) {
  const QuantSection& q = config.quant;
  if (!q.enabled()) return;
  const kernels::QuantScheme scheme = kernels::parse_quant_scheme(q.scheme, config.source + ": quant.scheme");
  std::vector<LinearWeight*> linears;
  model.collect_linears(linears);
  // Per modules pattern: the layers it quantizes, then (after them) the ones it matches that skip excludes.
  const size_t n = q.modules.size();
  std::vector<double> matched(2 * n, 0.0);
  for (LinearWeight* lw : linears) {
    const std::string module = lw->module_name();
    const bool quantize = quant_matches(q, module);
    for (size_t i = 0; i < n; ++i)
      if (lora_pattern_matches(q.modules[i], module)) matched[quantize ? i : n + i] += 1;
    if (!quantize) continue;
    const std::string what = config.source + ": quant (" + module + ")";
    if (lw->quantized()) {  // read pre-quantized from model.init_from (GPTQ, bitsandbytes): kept as it is
      const kernels::QuantizedWeight have = lw->quantized_weight();
      const bool same = have.scheme == scheme && have.block == q.block &&
                        (scheme != kernels::QuantScheme::NF4 || have.double_quant() == q.double_quant);
      ANVIL_CHECK(same, what, ": model.init_from ", config.model.init_from, " holds this layer quantized as ",
                  kernels::quant_scheme_name(have.scheme), " block ", have.block,
                  have.scheme == kernels::QuantScheme::NF4 ? (have.double_quant() ? " with double_quant" : " without double_quant") : "",
                  ", but the quant section asks for ", q.scheme, " block ", q.block, " — set quant.scheme: none to train on "
                  "the file's quantization, or match it (quant.scheme/block/double_quant)");
      continue;
    }
    const Tensor full = full_dense_weight(*lw, tp);
    const kernels::QuantizedWeight quantized =
        scheme == kernels::QuantScheme::NF4 ? kernels::quantize_nf4(full, q.double_quant, q.block, what)
                                            : kernels::quantize_groupwise(full, scheme, q.block, what);
    lw->set_quantized(quantized);
  }
  // The freed dense weights go back to the system rather than to the allocator's cache: the
  // memory a quantized base saves is what the process holds from here on.
  cpu_allocator().empty_cache();
  if (pp && pp->size() > 1) matched = all_reduce_sum(*pp, matched);
  for (size_t i = 0; i < n; ++i) {
    // A pattern whose every layer quant.skip excludes quantizes nothing, silently: as wrong as no match.
    ANVIL_CHECK(matched[i] > 0 || matched[n + i] == 0, config.source, ": quant.modules: '", q.modules[i],
                "' matches only layers that quant.skip excludes, so it quantizes nothing — remove them from quant.skip "
                "(default [lm_head]) or drop the pattern");
    ANVIL_CHECK(matched[i] > 0, config.source, ": quant.modules: '", q.modules[i], "' matches none of the model's "
                "Linear layers — a bare name such as q_proj matches the last part of a name, \"all-linear\" every "
                "Linear but lm_head");
  }
}

}  // namespace anvil
