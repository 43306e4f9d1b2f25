#include "trainer/lora.h"

#include <algorithm>
#include <cctype>
#include <set>

#include "core/glob.h"
#include "parallel/data_parallel.h"
#include "parallel/sequence_partition.h"
#include "trainer/quant.h"

namespace anvil {

bool lora_pattern_matches(const std::string& pattern, const std::string& module) {
  if (pattern == "all-linear") return module != "lm_head" && !glob_match("*.lm_head", module);
  return glob_match(pattern, module) || glob_match("*." + pattern, module);
}

namespace {
// The module names with layer numbers folded to `*`, distinct, in model order (for messages).
std::vector<std::string> folded_names(const std::vector<std::string>& names) {
  std::vector<std::string> out;
  std::set<std::string> seen;
  for (const std::string& name : names) {
    std::string folded;
    for (size_t i = 0; i < name.size();) {
      if (std::isdigit(static_cast<unsigned char>(name[i])) && (i == 0 || name[i - 1] == '.')) {
        while (i < name.size() && std::isdigit(static_cast<unsigned char>(name[i]))) ++i;
        folded += '*';
      } else {
        folded += name[i++];
      }
    }
    if (seen.insert(folded).second) out.push_back(folded);
  }
  return out;
}
}  // namespace

std::vector<Param*> attach_lora(TransformerLM& model, const RunConfig& config, Communicator* pp) {
  const LoraSection& section = config.lora;
  LoraSpec spec;
  spec.r = section.r;
  spec.alpha = section.alpha;
  spec.dropout = section.dropout;
  spec.rslora = section.rslora;
  spec.qa_group = section.qa_group;
  std::vector<LinearWeight*> linears;
  model.collect_linears(linears);
  std::vector<std::string> names;
  for (const LinearWeight* lw : linears) names.push_back(lw->module_name());
  std::vector<double> matched(section.modules.size(), 0.0);
  std::vector<Param*> params;
  for (LinearWeight* lw : linears) {
    bool adapt = false;
    for (size_t i = 0; i < section.modules.size(); ++i)
      if (lora_pattern_matches(section.modules[i], lw->module_name())) adapt = true, matched[i] += 1;
    if (!adapt) continue;
    LoraAdapter& adapter = lw->attach_lora(spec);
    params.push_back(&adapter.A);
    params.push_back(&adapter.B);
  }
  if (pp && pp->size() > 1) matched = all_reduce_sum(*pp, matched);  // a pattern matched on any stage matched
  for (size_t i = 0; i < matched.size(); ++i) {
    if (matched[i] > 0) continue;
    std::string listed;
    for (const std::string& n : folded_names(names)) listed += (listed.empty() ? "" : ", ") + n;
    ANVIL_FAIL(config.source, ": lora.modules: '", section.modules[i], "' matches none of the model's Linear layers",
               pp && pp->size() > 1 ? " (on any pipeline stage)" : "", " — they are ", listed,
               "; a bare name such as q_proj matches the last part of a name, \"all-linear\" every Linear but lm_head");
  }
  // A Kaiming-uniform, B zeros (neither reads the std).
  init_params(params, static_cast<uint64_t>(config.run.seed), 0.0f, 0.0f);
  return params;
}

std::vector<Param*> adapt_base(TransformerLM& model, const RunConfig& config, Communicator* tp, Communicator* pp) {
  quantize_model(model, config, tp, pp);
  return attach_lora(model, config, pp);
}

std::vector<Param*> lora_checkpoint_params(TransformerLM& model, const std::vector<Param*>& adapters) {
  std::vector<Param*> params = adapters;
  for (Param* p : model.params())
    if (p->keep_dtype) params.push_back(p);
  return params;
}

DropoutKey lora_dropout_key(const RunConfig& config, int64_t step, int64_t m, int64_t M, const Tensor& ids,
                            Communicator* data_group, int sp_size) {
  DropoutKey key;
  key.active = config.lora.dropout > 0;
  key.seed = static_cast<uint64_t>(config.run.seed);
  key.draw = static_cast<uint32_t>(step * M + m);
  const int rank = data_group ? data_group->rank() : 0;
  const int64_t B = ids.size(0), T = ids.size(1);
  // Under sp the rank holds its balanced slice of the full window (parallel/sequence_partition.h).
  const SequencePartition part = partition_sequence(sp_size > 1 ? config.data.seq_len : T, sp_size);
  key.first_sample = (rank / sp_size) * B;
  key.first_position = part.start(rank % sp_size);
  key.local_len = T;
  key.seq_len = part.total;
  return key;
}

}  // namespace anvil
