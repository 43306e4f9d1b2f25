#include "models/hf_quant.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <vector>

#include "core/error.h"
#include "models/hf_convert.h"
#include "models/linear_weight.h"
#include "models/transformer.h"

namespace anvil {
namespace fs = std::filesystem;
using kernels::QuantizedWeight;
using kernels::QuantScheme;

HfQuantization read_hf_quantization(const std::string& dir) {
  HfQuantization out;
  const std::string path = (fs::path(dir) / "config.json").string();
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return out;
  const nlohmann::json j = nlohmann::json::parse(std::ifstream(path), nullptr, /*allow_exceptions=*/false);
  ANVIL_CHECK(!j.is_discarded() && j.is_object(), path, ": not a JSON object");
  const auto it = j.find("quantization_config");
  if (it == j.end() || it->is_null()) return out;
  const nlohmann::json& qc = *it;
  ANVIL_CHECK(qc.is_object(), path, ": quantization_config is ", qc.dump(), " — expected an object");
  const auto m = qc.find("quant_method");
  ANVIL_CHECK(m != qc.end() && m->is_string(), path, ": quantization_config.quant_method is ",
              m == qc.end() ? "missing" : m->dump(), " — anvil reads \"gptq\" and \"bitsandbytes\" (nf4)");
  const std::string method = m->get<std::string>();
  if (method == "gptq") {
    out.format = HfQuantFormat::Gptq;
    out.gptq = parse_gptq_config(qc.dump(), path);
    return out;
  }
  ANVIL_CHECK(method == "bitsandbytes", path, ": quantization_config.quant_method \"", method,
              "\" — anvil reads \"gptq\" and \"bitsandbytes\" (nf4); convert other formats with their own tools");
  auto flag = [&](const char* key) {
    const auto f = qc.find(key);
    ANVIL_CHECK(f == qc.end() || f->is_null() || f->is_boolean(), path, ": quantization_config.", key, " is ",
                f->dump(), " but must be true or false");
    return f != qc.end() && f->is_boolean() && f->get<bool>();
  };
  ANVIL_CHECK(!flag("load_in_8bit"), path, ": quantization_config.load_in_8bit — bitsandbytes' 8-bit (LLM.int8) "
              "weights are not supported; anvil reads load_in_4bit with bnb_4bit_quant_type nf4");
  ANVIL_CHECK(flag("load_in_4bit"), path, ": quantization_config (bitsandbytes) lacks load_in_4bit: true — anvil "
              "reads 4-bit nf4 checkpoints only");
  const auto t = qc.find("bnb_4bit_quant_type");
  ANVIL_CHECK(t == qc.end() || *t == "nf4", path, ": quantization_config.bnb_4bit_quant_type is ",
              t == qc.end() ? "" : t->dump(), " — anvil reads nf4 (fp4 is not supported)");
  out.format = HfQuantFormat::BnbNF4;
  out.bnb_double_quant = flag("bnb_4bit_use_double_quant");
  return out;
}

namespace {
const char* format_name(HfQuantFormat f) {
  return f == HfQuantFormat::Gptq ? "GPTQ" : f == HfQuantFormat::BnbNF4 ? "bitsandbytes nf4" : "dense";
}
}  // namespace

void load_hf_dir(TransformerLM& model, const std::string& dir) {
  const SafetensorsIndex index = SafetensorsIndex::open(dir);
  const HfQuantization quant = read_hf_quantization(dir);
  const std::string prefix = family_of(model.config()).model_prefix;
  std::vector<LinearWeight*> linears;
  model.collect_linears(linears);

  // Read and check every quantized Linear before the model changes.
  struct Pending {
    LinearWeight* layer;
    QuantizedWeight weight;
    Tensor perm;
  };
  std::vector<Pending> pending;
  std::set<std::string> modules;
  for (LinearWeight* lw : linears) {
    if (lw->tied()) continue;
    const std::string module = lw->module_name();
    std::string name = module;  // files written from the base model class lack the prefix
    TensorMap tensors = linear_tensors(index, name);
    if (tensors.empty() && module.rfind(prefix, 0) == 0) {
      name = module.substr(prefix.size());
      tensors = linear_tensors(index, name);
    }
    const HfQuantFormat format = detect_hf_quant_format(tensors, name);
    if (format == HfQuantFormat::None) continue;
    ANVIL_CHECK(format == quant.format, index.path(), ": '", name, "' is stored as ", format_name(format),
                " but config.json's quantization_config says ", quant.format == HfQuantFormat::None ? "nothing (it has none)"
                : format_name(quant.format), " — the config.json does not belong to these weights");
    Pending p{lw, {}, {}};
    if (format == HfQuantFormat::Gptq) {
      GptqWeight g = read_gptq(tensors, name, quant.gptq, index.path());
      p.weight = std::move(g.weight);
      p.perm = std::move(g.perm);
    } else {
      p.weight = read_bnb_nf4(tensors, name, index.path()).weight;  // views of the mapping, copied by set_quantized
    }
    const Shape logical = logical_shape(lw->weight());
    ANVIL_CHECK(p.weight.out_features == logical[0] && p.weight.in_features == logical[1], index.path(), ": '", name,
                "' holds a quantized weight of [out, in] = [", p.weight.out_features, ", ", p.weight.in_features,
                "] but config.json's model has [", logical[0], ", ", logical[1], "] — the packed sizes do not match "
                "the model (check hidden_size, intermediate_size, num_key_value_heads and the quantization bits)");
    pending.push_back(std::move(p));
    modules.insert(module);
  }
  ANVIL_CHECK(quant.format == HfQuantFormat::None || !pending.empty() || model.layout().stages > 1, dir,
              "/config.json has a ", format_name(quant.format), " quantization_config but no Linear's tensors in ",
              index.path(), " are quantized — remove quantization_config or point at the quantized files");
  load_hf_weights(model, index, modules);  // its checks run before it loads anything
  for (Pending& p : pending) p.layer->set_quantized(p.weight, p.perm);
}

namespace {
QuantizedWeight on_cpu(const QuantizedWeight& w) {
  QuantizedWeight c = w;
  for (Tensor* t : {&c.packed, &c.absmax, &c.absmax_codes, &c.absmax_scales, &c.scales, &c.zeros})
    if (t->defined()) *t = t->to(Device::cpu());
  return c;
}

bool integer_zeros(const QuantizedWeight& w) {
  const int64_t qmax = (int64_t{1} << kernels::quant_bits(w.scheme)) - 1;
  const Tensor z = w.zeros.contiguous();
  for (int64_t i = 0; i < z.numel(); ++i) {
    const float v = z.data<float>()[i];
    if (v != std::nearbyint(v) || v < 0.0f || v > static_cast<float>(qmax)) return false;
  }
  return true;
}
}  // namespace

std::string write_quantized_hf(const TransformerLM& model_in, const Tokenizer* tokenizer, const std::string& dir,
                               const std::map<std::string, QuantizedWeight>& merged) {
  // Only lists the model's layers and params; nothing is modified.
  TransformerLM& model = const_cast<TransformerLM&>(model_in);
  std::vector<LinearWeight*> linears;
  model.collect_linears(linears);
  struct Entry {
    std::string module;
    QuantizedWeight weight;
    Tensor perm;
  };
  std::vector<Entry> entries;
  std::set<const Param*> packed;  // written in the quantized form (or merged away: adapters)
  for (LinearWeight* lw : linears) {
    const std::string module = lw->module_name();
    const auto it = merged.find(module);
    ANVIL_CHECK(!lw->lora() || it != merged.end(), module, " has a LoRA adapter that is not merged — a quantized "
                "export holds the base only: merge it (QA-LoRA: --merge), or export the adapter on its own");
    if (!lw->quantized()) {
      ANVIL_CHECK(it == merged.end(), module, " is dense: a merged quantized weight cannot replace it");
      continue;
    }
    ANVIL_CHECK(!lw->weight().shard.sharded(), module, " is split over tensor parallelism — export a whole model "
                "(load it with tp 1)");
    Entry e{module, on_cpu(it != merged.end() ? it->second : lw->quantized_weight()), Tensor()};
    if (lw->quantized_perm().defined()) e.perm = lw->quantized_perm().to(Device::cpu());
    entries.push_back(std::move(e));
    std::vector<Param*> params;
    lw->collect_params(params);
    for (Param* p : params)
      if (p != &lw->bias()) packed.insert(p);
  }
  ANVIL_CHECK(!entries.empty(), "the model has no quantized Linear — write it with save_hf (`anvil convert --to hf`)");
  const QuantizedWeight& first = entries.front().weight;
  // GPTQ's group_size -1: one group over each layer's whole input, whatever its width.
  const bool whole_rows = first.scheme != QuantScheme::NF4 &&
                          std::all_of(entries.begin(), entries.end(),
                                      [](const Entry& e) { return e.weight.block == e.weight.in_features; });
  bool act_order = false, fractional = false;
  for (const Entry& e : entries) {
    ANVIL_CHECK(e.weight.scheme == first.scheme && (whole_rows || e.weight.block == first.block) &&
                e.weight.double_quant() == first.double_quant(), e.module, " is ", kernels::quant_scheme_name(e.weight.scheme),
                " block ", e.weight.block, " but ", entries.front().module, " is ", kernels::quant_scheme_name(first.scheme),
                " block ", first.block, " — config.json's quantization_config holds one scheme for the whole model");
    act_order = act_order || e.perm.defined();
    if (first.scheme != QuantScheme::NF4) fractional = fractional || !integer_zeros(e.weight);
  }

  TensorMap tensors;
  nlohmann::json qc;
  std::string written;
  if (first.scheme == QuantScheme::NF4) {
    for (const Entry& e : entries) write_bnb_nf4(e.weight, "float32", e.module, tensors);
    qc = {{"quant_method", "bitsandbytes"}, {"load_in_4bit", true}, {"load_in_8bit", false},
          {"bnb_4bit_quant_type", "nf4"}, {"bnb_4bit_use_double_quant", first.double_quant()},
          {"bnb_4bit_compute_dtype", "float32"}, {"bnb_4bit_quant_storage", "uint8"}};
    written = "bitsandbytes";
  } else {
    GptqConfig c;
    c.bits = kernels::quant_bits(first.scheme);
    c.group_size = whole_rows ? -1 : first.block;
    c.desc_act = act_order;
    c.sym = false;
    c.checkpoint_format = fractional ? kAnvilFloatZeros : "gptq";
    for (const Entry& e : entries) write_gptq(e.weight, e.perm, c, DType::F32, e.module, tensors);
    qc = nlohmann::json::parse(gptq_config_json(c));
    written = c.checkpoint_format;
  }
  std::vector<Param*> params;
  model.collect_own_params(params);
  for (const Param* p : params) {
    if (packed.count(p)) continue;
    ANVIL_CHECK(!p->keep_dtype, p->name, " is a quantized tensor of a layer the export does not know");
    add_hf_dense_tensor(model.config(), *p, tensors);
  }
  write_hf_dir(model.config(), tensors, tokenizer, dir, {{"quantization_config", qc}});
  return written;
}

}  // namespace anvil
