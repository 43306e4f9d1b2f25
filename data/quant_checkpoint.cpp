// bitsandbytes NF4 and GPTQ Linear tensors <-> kernels::QuantizedWeight (see quant_checkpoint.h).
// Readers validate every tensor's dtype and shape against the sizes the format implies before
// touching a byte, so a malformed checkpoint is one anvil::Error, never a read out of bounds.
#include "data/quant_checkpoint.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>
#include <vector>

namespace anvil {
namespace {

using kernels::QuantizedWeight;
using kernels::QuantScheme;
using json = nlohmann::json;

constexpr int64_t kNF4Block = 64;         // the only bitsandbytes blocksize anvil reads
constexpr int64_t kNestedBlock = 256;     // bitsandbytes' double-quantization blocksize
constexpr int64_t kMaxDim = int64_t{1} << 31;  // a Linear dimension beyond this is not a real checkpoint
constexpr size_t kMaxJsonBytes = 1 << 16;
const char* const kBnbKeyPrefix = "quant_state.bitsandbytes__";

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// "`tensor` in `source`" for messages.
std::string where(const std::string& tensor, const std::string& source) {
  return "'" + tensor + "' in " + source;
}

const Tensor& require(const TensorMap& tensors, const std::string& tensor, const std::string& source,
                      const char* format, const char* what) {
  const auto it = tensors.find(tensor);
  ANVIL_CHECK(it != tensors.end(), source, ": the ", format, " Linear has no '", tensor, "' (", what,
              ") — the checkpoint is incomplete or not in this format");
  return it->second;
}

void expect_tensor(const Tensor& t, const std::string& tensor, const std::string& source, DType dtype,
                   const Shape& shape, const std::string& why) {
  ANVIL_CHECK(t.dtype() == dtype, where(tensor, source), " is ", dtype_name(t.dtype()), " but must be ",
              dtype_name(dtype), " (", why, ")");
  ANVIL_CHECK(t.shape() == shape, where(tensor, source), " has shape ", shape_str(t.shape()), " but must be ",
              shape_str(shape), " (", why, ")");
}

// A contiguous CPU copy (views from a mapping already are, unless misaligned).
Tensor cpu_contiguous(const Tensor& t, const std::string& tensor, const std::string& source) {
  ANVIL_CHECK(t.device().is_cpu(), where(tensor, source), " is on ", t.device().str(),
              " — read checkpoints into CPU tensors");
  return t.contiguous();
}

// ---------------------------------------------------------------- bitsandbytes NF4

struct BnbNames {
  std::string weight, absmax, quant_map, nested_absmax, nested_quant_map, state;
  explicit BnbNames(const std::string& name)
      : weight(name + ".weight"),
        absmax(weight + ".absmax"),
        quant_map(weight + ".quant_map"),
        nested_absmax(weight + ".nested_absmax"),
        nested_quant_map(weight + ".nested_quant_map"),
        state(weight + "." + kBnbKeyPrefix + "nf4") {}
};

bool is_bnb_dtype(const std::string& s) { return s == "float32" || s == "bfloat16" || s == "float16"; }

// A JSON integer field (bitsandbytes writes Python ints).
int64_t json_int(const json& j, const char* key, const std::string& tensor, const std::string& source) {
  const auto it = j.find(key);
  ANVIL_CHECK(it != j.end(), where(tensor, source), " has no \"", key, "\" — bitsandbytes' quant_state holds it");
  ANVIL_CHECK(it->is_number_integer(), where(tensor, source), ": \"", key, "\" is ", it->dump(),
              " but bitsandbytes writes an integer");
  return it->get<int64_t>();
}

std::string json_string(const json& j, const char* key, const std::string& tensor, const std::string& source) {
  const auto it = j.find(key);
  ANVIL_CHECK(it != j.end(), where(tensor, source), " has no \"", key, "\" — bitsandbytes' quant_state holds it");
  ANVIL_CHECK(it->is_string(), where(tensor, source), ": \"", key, "\" is ", it->dump(), " but bitsandbytes writes a string");
  return it->get<std::string>();
}

// Bitwise equality with `ref`, or within `ulps` ulps of it; -1 when it matches, else the first index off.
int64_t first_mismatch(const float* got, const float* ref, int64_t n, int ulps) {
  for (int64_t i = 0; i < n; ++i) {
    if (got[i] == ref[i]) continue;
    const float ulp = std::nextafter(std::fabs(ref[i]), 2.0f) - std::fabs(ref[i]);
    if (!(std::fabs(got[i] - ref[i]) <= static_cast<float>(ulps) * ulp)) return i;
  }
  return -1;
}

json parse_bnb_state(const TensorMap& tensors, const std::string& name, const std::string& source) {
  const BnbNames n(name);
  // Exactly one quant_state tensor, and it must be nf4 (from_dict's rule, narrowed to what anvil holds).
  const std::string prefix = n.weight + "." + kBnbKeyPrefix;
  for (auto it = tensors.lower_bound(prefix); it != tensors.end() && it->first.rfind(prefix, 0) == 0; ++it) {
    ANVIL_CHECK(it->first == n.state, where(it->first, source), " is a bitsandbytes '",
                it->first.substr(prefix.size()), "' weight — anvil reads nf4 only (re-quantize with bnb_4bit_quant_type=\"nf4\")");
  }
  const Tensor& t = require(tensors, n.state, source, "bitsandbytes", "the quant_state JSON");
  ANVIL_CHECK(t.dtype() == DType::U8 && t.dim() == 1, where(n.state, source), " is ", t.describe(),
              " but bitsandbytes stores the quant_state JSON as u8 [bytes]");
  ANVIL_CHECK(t.numel() > 0 && static_cast<size_t>(t.numel()) <= kMaxJsonBytes, where(n.state, source), " holds ",
              t.numel(), " bytes — a bitsandbytes quant_state is a short JSON object");
  const Tensor c = cpu_contiguous(t, n.state, source);
  const char* text = static_cast<const char*>(c.raw_data());
  json j = json::parse(text, text + c.numel(), nullptr, /*allow_exceptions=*/false);
  ANVIL_CHECK(j.is_object(), where(n.state, source), " is not a JSON object — bitsandbytes writes json.dumps of the quant_state");
  static const std::set<std::string> known{"quant_type", "blocksize", "dtype", "shape",
                                           "nested_blocksize", "nested_dtype", "nested_offset"};
  for (const auto& [key, value] : j.items()) {
    ANVIL_CHECK(known.count(key), where(n.state, source), " has the key \"", key,
                "\", which bitsandbytes' QuantState does not write");
  }
  return j;
}

}  // namespace

HfQuantFormat detect_hf_quant_format(const TensorMap& tensors, const std::string& name) {
  if (tensors.count(name + ".qweight")) return HfQuantFormat::Gptq;
  const std::string prefix = name + ".weight." + kBnbKeyPrefix;
  const auto it = tensors.lower_bound(prefix);
  if (it != tensors.end() && it->first.rfind(prefix, 0) == 0) return HfQuantFormat::BnbNF4;
  if (tensors.count(name + ".weight.absmax")) return HfQuantFormat::BnbNF4;
  return HfQuantFormat::None;
}

TensorMap linear_tensors(const SafetensorsIndex& checkpoint, const std::string& name) {
  TensorMap out;
  const std::string prefix = name + ".";
  for (const std::string& n : checkpoint.names()) {
    if (n.rfind(prefix, 0) == 0) out.emplace(n, checkpoint.tensor(n));
  }
  return out;
}

BnbNF4Weight read_bnb_nf4(const TensorMap& tensors, const std::string& name, const std::string& source) {
  const BnbNames n(name);
  const json state = parse_bnb_state(tensors, name, source);
  const std::string& st = n.state;
  for (auto it = tensors.lower_bound(n.weight + "."); it != tensors.end() && it->first.rfind(n.weight + ".", 0) == 0;
       ++it) {
    const std::string& t = it->first;
    ANVIL_CHECK(t == n.absmax || t == n.quant_map || t == n.nested_absmax || t == n.nested_quant_map || t == n.state,
                where(t, source), " is not a tensor of bitsandbytes' nf4 quant_state — the checkpoint is in another format");
  }
  ANVIL_CHECK(json_string(state, "quant_type", st, source) == "nf4", where(st, source), ": quant_type is ",
              state["quant_type"].dump(), " — anvil reads nf4 only");
  const int64_t blocksize = json_int(state, "blocksize", st, source);
  ANVIL_CHECK(blocksize == kNF4Block, where(st, source), ": blocksize ", blocksize, " — anvil reads nf4 with blocksize ",
              kNF4Block, " only (bitsandbytes' default; re-quantize with it)");
  BnbNF4Weight out;
  out.dtype = json_string(state, "dtype", st, source);
  ANVIL_CHECK(is_bnb_dtype(out.dtype), where(st, source), ": dtype \"", out.dtype,
              "\" — bitsandbytes 4-bit weights are float32, bfloat16 or float16");
  const auto shape = state.find("shape");
  ANVIL_CHECK(shape != state.end() && shape->is_array() && shape->size() == 2 && (*shape)[0].is_number_integer() &&
                  (*shape)[1].is_number_integer(),
              where(st, source), ": shape is ", shape == state.end() ? "missing" : shape->dump(),
              " but a Linear weight's quant_state holds [out_features, in_features]");
  QuantizedWeight& w = out.weight;
  w.scheme = QuantScheme::NF4;
  w.block = kNF4Block;
  w.out_features = (*shape)[0].get<int64_t>();
  w.in_features = (*shape)[1].get<int64_t>();
  ANVIL_CHECK(w.out_features > 0 && w.in_features > 0 && w.out_features < kMaxDim && w.in_features < kMaxDim,
              where(st, source), ": shape ", shape->dump(), " is not a weight shape anvil can hold");
  ANVIL_CHECK(w.in_features % kNF4Block == 0, where(st, source), ": in_features ", w.in_features,
              " is not a multiple of the block ", kNF4Block,
              " — bitsandbytes' blocks would straddle rows, which anvil's nf4 format cannot hold");
  const int64_t numel = w.numel(), blocks = numel / kNF4Block;

  const Tensor& packed = require(tensors, n.weight, source, "bitsandbytes", "the packed codes");
  ANVIL_CHECK(packed.dtype() == DType::U8, where(n.weight, source), " is ", dtype_name(packed.dtype()),
              " — anvil reads bitsandbytes' quant_storage uint8 only (an int8 weight with SCB is LLM.int8, not nf4)");
  expect_tensor(packed, n.weight, source, DType::U8, {numel / 2, 1}, "two 4-bit codes per byte of the quant_state's shape");
  w.packed = cpu_contiguous(packed, n.weight, source).view({numel / 2});

  const Tensor& qmap = require(tensors, n.quant_map, source, "bitsandbytes", "the NF4 table");
  expect_tensor(qmap, n.quant_map, source, DType::F32, {16}, "the 16 code values");
  const Tensor qmap_c = cpu_contiguous(qmap, n.quant_map, source);
  const int64_t off = first_mismatch(qmap_c.data<float>(), kernels::nf4_values(), 16, 0);
  ANVIL_CHECK(off < 0, where(n.quant_map, source), " is not the NF4 table (value ", off, " is ",
              off < 0 ? 0.0f : qmap_c.data<float>()[off], ", NF4 has ", off < 0 ? 0.0f : kernels::nf4_values()[off],
              ") — anvil reads nf4 only");

  const bool nested = state.contains("nested_offset") || state.contains("nested_blocksize") ||
                      state.contains("nested_dtype") || tensors.count(n.nested_absmax) ||
                      tensors.count(n.nested_quant_map);
  const Tensor& absmax = require(tensors, n.absmax, source, "bitsandbytes", "the per-block absmax");
  if (!nested) {
    expect_tensor(absmax, n.absmax, source, DType::F32, {blocks}, "one absmax per 64-block");
    w.absmax = cpu_contiguous(absmax, n.absmax, source);
    return out;
  }
  const int64_t nested_block = json_int(state, "nested_blocksize", st, source);
  ANVIL_CHECK(nested_block == kNestedBlock, where(st, source), ": nested_blocksize ", nested_block,
              " — anvil reads double quantization with blocks of ", kNestedBlock, " absmaxes only");
  const std::string nested_dtype = json_string(state, "nested_dtype", st, source);
  ANVIL_CHECK(nested_dtype == "float32", where(st, source), ": nested_dtype \"", nested_dtype,
              "\" — bitsandbytes' nested absmaxes are float32");
  const auto offset = state.find("nested_offset");
  ANVIL_CHECK(offset != state.end() && offset->is_number(), where(st, source), ": nested_offset is ",
              offset == state.end() ? "missing" : offset->dump(), " but double quantization needs the absmaxes' mean");
  w.absmax_offset = static_cast<float>(offset->get<double>());
  ANVIL_CHECK(std::isfinite(w.absmax_offset), where(st, source), ": nested_offset ", offset->dump(),
              " is not a finite f32");
  expect_tensor(absmax, n.absmax, source, DType::U8, {blocks}, "one 8-bit absmax code per 64-block when nested");
  w.absmax_codes = cpu_contiguous(absmax, n.absmax, source);
  const Tensor& scales = require(tensors, n.nested_absmax, source, "double-quantized bitsandbytes", "the nested absmax");
  expect_tensor(scales, n.nested_absmax, source, DType::F32, {ceil_div(blocks, kNestedBlock)},
                "one f32 scale per 256 absmaxes");
  w.absmax_scales = cpu_contiguous(scales, n.nested_absmax, source);
  const Tensor& dmap = require(tensors, n.nested_quant_map, source, "double-quantized bitsandbytes", "the dynamic map");
  expect_tensor(dmap, n.nested_quant_map, source, DType::F32, {256}, "bitsandbytes' signed dynamic 8-bit map");
  const Tensor dmap_c = cpu_contiguous(dmap, n.nested_quant_map, source);
  const int64_t doff = first_mismatch(dmap_c.data<float>(), kernels::dynamic_map_signed(), 256, 2);
  ANVIL_CHECK(doff < 0, where(n.nested_quant_map, source), " is not bitsandbytes' signed dynamic map (value ", doff,
              " is ", doff < 0 ? 0.0f : dmap_c.data<float>()[doff], ", the map has ",
              doff < 0 ? 0.0f : kernels::dynamic_map_signed()[doff], ") — anvil reads create_dynamic_map(signed=True) only");
  return out;
}

BnbNF4Weight read_bnb_nf4(const SafetensorsIndex& checkpoint, const std::string& name) {
  return read_bnb_nf4(linear_tensors(checkpoint, name), name, checkpoint.path());
}

void write_bnb_nf4(const QuantizedWeight& w, const std::string& dtype, const std::string& name, TensorMap& out) {
  const std::string what = "write_bnb_nf4 '" + name + "'";
  kernels::check_quantized_weight(w, what);
  ANVIL_CHECK(w.scheme == QuantScheme::NF4 && w.block == kNF4Block, what, ": the weight is ",
              kernels::quant_scheme_name(w.scheme), " with block ", w.block, " — bitsandbytes' format holds nf4 with block ",
              kNF4Block, " here");
  ANVIL_CHECK(is_bnb_dtype(dtype), what, ": dtype \"", dtype, "\" — choose float32, bfloat16 or float16");
  ANVIL_CHECK(w.packed.device().is_cpu(), what, ": the weight is on ", w.packed.device().str(), " — move it to the CPU");
  const BnbNames n(name);
  const int64_t numel = w.numel();
  out[n.weight] = w.packed.clone().view({numel / 2, 1});
  out[n.quant_map] = Tensor::from_vector(std::vector<float>(kernels::nf4_values(), kernels::nf4_values() + 16), {16});
  // json.dumps's key order, as bitsandbytes' QuantState.as_dict writes them.
  nlohmann::ordered_json state = nlohmann::ordered_json::object();
  state["quant_type"] = "nf4";
  state["blocksize"] = kNF4Block;
  state["dtype"] = dtype;
  state["shape"] = {w.out_features, w.in_features};
  if (w.double_quant()) {
    out[n.absmax] = w.absmax_codes.clone();
    out[n.nested_absmax] = w.absmax_scales.clone();
    out[n.nested_quant_map] = Tensor::from_vector(
        std::vector<float>(kernels::dynamic_map_signed(), kernels::dynamic_map_signed() + 256), {256});
    state["nested_blocksize"] = kNestedBlock;
    state["nested_dtype"] = "float32";
    state["nested_offset"] = static_cast<double>(w.absmax_offset);  // shortest decimal that round-trips
  } else {
    out[n.absmax] = w.absmax.clone();
  }
  const std::string text = state.dump();
  Tensor bytes = Tensor::empty({static_cast<int64_t>(text.size())}, DType::U8);
  std::memcpy(bytes.raw_data(), text.data(), text.size());
  out[n.state] = bytes;
}

// ---------------------------------------------------------------- GPTQ

namespace {

bool json_bool(const json& j, const char* key, bool fallback, const std::string& source) {
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  ANVIL_CHECK(it->is_boolean(), source, ": \"", key, "\" is ", it->dump(), " but must be true or false");
  return it->get<bool>();
}

bool is_v2(const GptqConfig& c) { return c.checkpoint_format == "gptq_v2"; }
bool float_zeros(const GptqConfig& c) { return c.checkpoint_format == kAnvilFloatZeros; }

void check_config(const GptqConfig& c, const std::string& source) {
  ANVIL_CHECK(c.bits == 4 || c.bits == 2, source, ": GPTQ bits ", c.bits,
              " — anvil holds int4 and int2 weights (3- and 8-bit GPTQ are not supported)");
  ANVIL_CHECK(c.group_size == -1 || (c.group_size > 0 && c.group_size % 8 == 0 && c.group_size < kMaxDim), source,
              ": GPTQ group_size ", c.group_size, " — anvil reads -1 or a positive multiple of 8");
  ANVIL_CHECK(c.checkpoint_format == "gptq" || c.checkpoint_format == "gptq_v2" || float_zeros(c), source,
              ": checkpoint_format \"", c.checkpoint_format, "\" — anvil reads \"gptq\", \"gptq_v2\" and its own \"",
              kAnvilFloatZeros, "\" (marlin, awq and other packings are not supported)");
}

}  // namespace

GptqConfig parse_gptq_config(const std::string& json_text, const std::string& source) {
  json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  ANVIL_CHECK(j.is_object(), source, ": not a JSON object — expected quantize_config.json or a config.json with quantization_config");
  if (j.contains("quantization_config")) {
    json q = j["quantization_config"];
    j = std::move(q);
    ANVIL_CHECK(j.is_object(), source, ": quantization_config is not a JSON object");
  }
  if (j.contains("quant_method")) {
    ANVIL_CHECK(j["quant_method"] == "gptq", source, ": quant_method ", j["quant_method"].dump(),
                " — this reader takes GPTQ checkpoints (bitsandbytes ones are read per tensor by read_bnb_nf4)");
  }
  GptqConfig c;
  ANVIL_CHECK(j.contains("bits") && j["bits"].is_number_integer(), source, ": \"bits\" is ",
              j.contains("bits") ? j["bits"].dump() : "missing", " — a GPTQ config states its bit width");
  c.bits = static_cast<int>(std::clamp<int64_t>(j["bits"].get<int64_t>(), -1, 64));
  ANVIL_CHECK(j.contains("group_size") && j["group_size"].is_number_integer(), source, ": \"group_size\" is ",
              j.contains("group_size") ? j["group_size"].dump() : "missing", " — a GPTQ config states its group size");
  c.group_size = std::clamp<int64_t>(j["group_size"].get<int64_t>(), -2, kMaxDim);
  c.desc_act = json_bool(j, "desc_act", false, source);
  c.sym = json_bool(j, "sym", true, source);
  const json* fmt = nullptr;
  for (const char* key : {"checkpoint_format", "format"}) {
    if (!j.contains(key) || j[key].is_null()) continue;
    ANVIL_CHECK(j[key].is_string(), source, ": \"", key, "\" is ", j[key].dump(), " but must be a string");
    ANVIL_CHECK(fmt == nullptr || *fmt == j[key], source, ": checkpoint_format ", fmt ? fmt->dump() : "",
                " and format ", j[key].dump(), " disagree — keep one");
    fmt = &j[key];
  }
  if (fmt) c.checkpoint_format = fmt->get<std::string>();
  check_config(c, source);
  return c;
}

std::string gptq_config_json(const GptqConfig& config) {
  check_config(config, "gptq_config_json");
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  j["bits"] = config.bits;
  j["group_size"] = config.group_size;
  j["desc_act"] = config.desc_act;
  j["sym"] = config.sym;
  j["quant_method"] = "gptq";
  j["checkpoint_format"] = config.checkpoint_format;
  return j.dump(2) + "\n";
}

GptqWeight read_gptq(const TensorMap& tensors, const std::string& name, const GptqConfig& config,
                     const std::string& source) {
  check_config(config, source);
  const std::string qw_name = name + ".qweight", qz_name = name + ".qzeros", s_name = name + ".scales",
                    g_name = name + ".g_idx";
  const int bits = config.bits, per_word = 32 / bits;
  const uint32_t mask = (1u << bits) - 1;
  const Tensor& qweight = require(tensors, qw_name, source, "GPTQ", "the packed codes");
  ANVIL_CHECK(qweight.dtype() == DType::I32 && qweight.dim() == 2 && qweight.size(0) > 0 && qweight.size(1) > 0,
              where(qw_name, source), " is ", qweight.describe(), " but GPTQ packs codes as i32 [in·bits/32, out]");
  const int64_t out_features = qweight.size(1);
  int64_t in_features = qweight.size(0) * per_word;
  const auto g_it = tensors.find(g_name);
  if (g_it != tensors.end()) {
    ANVIL_CHECK(g_it->second.dim() == 1, where(g_name, source), " is ", g_it->second.describe(),
                " but GPTQ's g_idx is i32 [in_features]");
    in_features = g_it->second.size(0);
  }
  ANVIL_CHECK(in_features < kMaxDim && out_features < kMaxDim, where(qw_name, source), " is ", qweight.describe(),
              " — not a weight shape anvil can hold");
  ANVIL_CHECK(qweight.size(0) * per_word == in_features, where(qw_name, source), " has ", qweight.size(0),
              " rows, which hold ", qweight.size(0) * per_word, " ", bits, "-bit codes per column, but g_idx has ",
              in_features, " input features — the bits in the config (", bits, ") or the tensors are wrong");
  const int64_t group = config.group_size == -1 ? in_features : config.group_size;
  ANVIL_CHECK(in_features % group == 0, where(qw_name, source), ": in_features ", in_features,
              " is not a multiple of group_size ", group, " — anvil's int formats need whole groups");
  ANVIL_CHECK(out_features % per_word == 0, where(qw_name, source), ": out_features ", out_features,
              " is not a multiple of ", per_word, ", so qzeros cannot pack it");
  const int64_t groups = in_features / group;
  // anvil_float_zeros: f32 zeros [in / group_size, out] in place of qzeros.
  const std::string z_name = float_zeros(config) ? name + ".zeros" : qz_name;
  const Tensor& qzeros_t = require(tensors, z_name, source, "GPTQ", "the zero points");
  if (float_zeros(config))
    expect_tensor(qzeros_t, z_name, source, DType::F32, {groups, out_features}, "f32 zero points [in / group_size, out]");
  else
    expect_tensor(qzeros_t, qz_name, source, DType::I32, {groups, out_features / per_word},
                  "packed zero points [in / group_size, out·bits/32]");
  const Tensor& scales_t = require(tensors, s_name, source, "GPTQ", "the group scales");
  ANVIL_CHECK(scales_t.dtype() == DType::F16 || scales_t.dtype() == DType::BF16 || scales_t.dtype() == DType::F32,
              where(s_name, source), " is ", dtype_name(scales_t.dtype()), " — GPTQ scales are f16 (bf16 and f32 are read too)");
  expect_tensor(scales_t, s_name, source, scales_t.dtype(), {groups, out_features}, "one scale per group and output");

  // g_idx: each group exactly `group` columns; trivial (i / group) means no permutation.
  std::vector<int32_t> g_idx(static_cast<size_t>(in_features));
  bool trivial = true;
  if (g_it != tensors.end()) {
    const Tensor gt = cpu_contiguous(g_it->second, g_name, source);
    expect_tensor(gt, g_name, source, DType::I32, {in_features}, "the group of every input column");
    std::vector<int64_t> count(static_cast<size_t>(groups), 0);
    for (int64_t i = 0; i < in_features; ++i) {
      const int32_t gi = gt.data<int32_t>()[i];
      ANVIL_CHECK(gi >= 0 && gi < groups, where(g_name, source), "[", i, "] = ", gi, " is not a group in [0, ", groups, ")");
      ANVIL_CHECK(++count[gi] <= group, where(g_name, source), " puts more than group_size ", group,
                  " columns into group ", gi, " — the group_size in the config does not match the checkpoint");
      g_idx[i] = gi;
      trivial = trivial && gi == i / group;
    }
  } else {
    for (int64_t i = 0; i < in_features; ++i) g_idx[i] = static_cast<int32_t>(i / group);
  }
  ANVIL_CHECK(trivial || config.desc_act, where(g_name, source),
              " permutes the input columns but the config has desc_act false — GPTQ kernels would ignore g_idx "
              "and disagree about the weight; fix the config's desc_act");
  std::vector<int32_t> perm(static_cast<size_t>(in_features));
  for (int64_t j = 0; j < in_features; ++j) perm[j] = static_cast<int32_t>(j);
  if (!trivial) {
    std::stable_sort(perm.begin(), perm.end(), [&](int32_t a, int32_t b) { return g_idx[a] < g_idx[b]; });
  }

  GptqWeight result;
  QuantizedWeight& w = result.weight;
  w.scheme = bits == 4 ? QuantScheme::Int4 : QuantScheme::Int2;
  w.out_features = out_features;
  w.in_features = in_features;
  w.block = group;
  const Tensor qw = cpu_contiguous(qweight, qw_name, source);
  const Tensor qz = cpu_contiguous(qzeros_t, z_name, source);
  const Tensor sc = cpu_contiguous(scales_t, s_name, source).to(DType::F32);
  const auto* pqw = qw.data<int32_t>();
  const auto* pqz = float_zeros(config) ? nullptr : qz.data<int32_t>();
  const float* pfz = float_zeros(config) ? qz.data<float>() : nullptr;
  const float* psc = sc.data<float>();
  w.scales = Tensor::empty({out_features, groups}, DType::F32);
  w.zeros = Tensor::empty({out_features, groups}, DType::F32);
  w.packed = Tensor::zeros({w.numel() * bits / 8}, DType::U8);
  float* ps = w.scales.data<float>();
  float* pz = w.zeros.data<float>();
  uint8_t* pp = w.packed.data<uint8_t>();
  const int per_byte = 8 / bits;
  for (int64_t k = 0; k < groups; ++k) {
    for (int64_t o = 0; o < out_features; ++o) {
      const float s = psc[k * out_features + o];
      ANVIL_CHECK(std::isfinite(s), where(s_name, source), "[", k, ", ", o, "] is ", s, " — scales must be finite");
      ps[o * groups + k] = s;
      if (pfz) {
        const float z = pfz[k * out_features + o];
        ANVIL_CHECK(std::isfinite(z), where(z_name, source), "[", k, ", ", o, "] is ", z, " — zeros must be finite");
        pz[o * groups + k] = z;
        continue;
      }
      const uint32_t word = static_cast<uint32_t>(pqz[k * (out_features / per_word) + o / per_word]);
      const uint32_t f = (word >> (bits * (o % per_word))) & mask;
      pz[o * groups + k] = static_cast<float>(is_v2(config) ? f : (f + 1) & mask);
    }
  }
  // Codes: column j of ours is column perm[j] of the file; ours packs the first element high.
  for (int64_t j = 0; j < in_features; ++j) {
    const int64_t i = perm[j];
    const int32_t* row = pqw + (i / per_word) * out_features;
    const int shift = bits * static_cast<int>(i % per_word);
    for (int64_t o = 0; o < out_features; ++o) {
      const uint32_t q = (static_cast<uint32_t>(row[o]) >> shift) & mask;
      const int64_t e = o * in_features + j;
      pp[e / per_byte] = static_cast<uint8_t>(pp[e / per_byte] | (q << (8 - bits * static_cast<int>(e % per_byte + 1))));
    }
  }
  if (!trivial) result.perm = Tensor::from_vector(perm, {in_features});
  return result;
}

GptqWeight read_gptq(const SafetensorsIndex& checkpoint, const std::string& name, const GptqConfig& config) {
  return read_gptq(linear_tensors(checkpoint, name), name, config, checkpoint.path());
}

void write_gptq(const QuantizedWeight& w, const Tensor& perm, const GptqConfig& config, DType scales_dtype,
                const std::string& name, TensorMap& out) {
  const std::string what = "write_gptq '" + name + "'";
  kernels::check_quantized_weight(w, what);
  check_config(config, what);
  ANVIL_CHECK(w.scheme != QuantScheme::NF4, what, ": the weight is nf4 — GPTQ holds int4/int2 (write nf4 with write_bnb_nf4)");
  const int bits = kernels::quant_bits(w.scheme), per_word = 32 / bits;
  const uint32_t qmax = (1u << bits) - 1;
  ANVIL_CHECK(config.bits == bits, what, ": config bits ", config.bits, " but the weight is ",
              kernels::quant_scheme_name(w.scheme));
  const int64_t in = w.in_features, out_f = w.out_features, groups = in / w.block;
  ANVIL_CHECK(config.group_size == w.block || (config.group_size == -1 && w.block == in), what, ": config group_size ",
              config.group_size, " but the weight's groups are ", w.block, " wide");
  ANVIL_CHECK(in % per_word == 0 && out_f % per_word == 0, what, ": GPTQ packs ", per_word,
              " codes per int32 along both dims, but the weight is [", out_f, ", ", in, "]");
  ANVIL_CHECK(scales_dtype == DType::F16 || scales_dtype == DType::BF16 || scales_dtype == DType::F32, what,
              ": scales dtype ", dtype_name(scales_dtype), " — choose f16 (GPTQ's), bf16 or f32");
  ANVIL_CHECK(w.packed.device().is_cpu(), what, ": the weight is on ", w.packed.device().str(), " — move it to the CPU");
  std::vector<int32_t> p(static_cast<size_t>(in));
  for (int64_t j = 0; j < in; ++j) p[j] = static_cast<int32_t>(j);
  if (perm.defined()) {
    ANVIL_CHECK(perm.dtype() == DType::I32 && perm.shape() == Shape{in} && perm.device().is_cpu(), what, ": perm is ",
                perm.describe(), " but must be i32 [", in, "] on the CPU (read_gptq's)");
    const Tensor pc = perm.contiguous();
    std::vector<char> seen(static_cast<size_t>(in), 0);
    for (int64_t j = 0; j < in; ++j) {
      const int32_t v = pc.data<int32_t>()[j];
      ANVIL_CHECK(v >= 0 && v < in && !seen[v], what, ": perm is not a permutation of [0, ", in, ") (entry ", j, ")");
      seen[v] = 1;
      p[j] = v;
    }
  }
  bool trivial = true;
  for (int64_t j = 0; j < in; ++j) trivial = trivial && p[j] == j;
  ANVIL_CHECK(trivial || config.desc_act, what, ": the weight has a column permutation but config.desc_act is false");

  const Tensor scales = w.scales.contiguous(), zeros = w.zeros.contiguous();
  const float* ps = scales.data<float>();
  const float* pz = zeros.data<float>();
  Tensor qzeros = Tensor::zeros({groups, out_f / per_word}, DType::I32);
  Tensor fzeros = Tensor::empty({groups, float_zeros(config) ? out_f : 0}, DType::F32);
  Tensor gscales = Tensor::empty({groups, out_f}, DType::F32);
  auto* pqz = qzeros.data<int32_t>();
  float* pgs = gscales.data<float>();
  for (int64_t o = 0; o < out_f; ++o) {
    for (int64_t k = 0; k < groups; ++k) {
      const float z = pz[o * groups + k];
      pgs[k * out_f + o] = ps[o * groups + k];
      if (float_zeros(config)) {  // any finite f32 zero (QA-LoRA's merged ones), as it is
        ANVIL_CHECK(std::isfinite(z), what, ": zero point ", z, " at row ", o, ", group ", k, " is not finite");
        fzeros.data<float>()[k * out_f + o] = z;
        continue;
      }
      ANVIL_CHECK(z == std::nearbyint(z) && z >= 0.0f && z <= static_cast<float>(qmax), what, ": zero point ", z,
                  " at row ", o, ", group ", k, " is not an integer in [0, ", qmax,
                  "] — GPTQ packs integer zeros; write a QA-LoRA-merged weight (fractional zeros) with "
                  "checkpoint_format \"", kAnvilFloatZeros, "\", which stores them as f32");
      ANVIL_CHECK(!config.sym || z == static_cast<float>(1u << (bits - 1)), what, ": config.sym is true but row ", o,
                  ", group ", k, " has zero point ", z, " — write sym false");
      const uint32_t f = is_v2(config) ? static_cast<uint32_t>(z) : (static_cast<uint32_t>(z) - 1u) & qmax;
      pqz[k * (out_f / per_word) + o / per_word] =
          static_cast<int32_t>(static_cast<uint32_t>(pqz[k * (out_f / per_word) + o / per_word]) |
                               (f << (bits * (o % per_word))));
    }
  }
  Tensor out_scales = gscales.to(scales_dtype);
  const Tensor back = out_scales.to(DType::F32);
  for (int64_t e = 0; e < back.numel(); ++e) {
    const float s = back.data<float>()[e];
    ANVIL_CHECK(std::isfinite(s) && (s != 0.0f || pgs[e] == 0.0f), what, ": scale ", pgs[e], " (group ", e / out_f,
                ", row ", e % out_f, ") does not fit ", dtype_name(scales_dtype), " — write the scales as f32");
  }
  // qweight in the file's column order: original column i = p[j] takes our column j.
  Tensor qweight = Tensor::zeros({in / per_word, out_f}, DType::I32);
  Tensor g_idx = Tensor::empty({in}, DType::I32);
  auto* pqw = qweight.data<int32_t>();
  const Tensor packed = w.packed.contiguous();
  const uint8_t* pp = packed.data<uint8_t>();
  const int per_byte = 8 / bits;
  for (int64_t j = 0; j < in; ++j) {
    const int64_t i = p[j];
    g_idx.data<int32_t>()[i] = static_cast<int32_t>(j / w.block);
    int32_t* row = pqw + (i / per_word) * out_f;
    const int shift = bits * static_cast<int>(i % per_word);
    for (int64_t o = 0; o < out_f; ++o) {
      const int64_t e = o * in + j;
      const uint32_t q = (pp[e / per_byte] >> (8 - bits * static_cast<int>(e % per_byte + 1))) & qmax;
      row[o] = static_cast<int32_t>(static_cast<uint32_t>(row[o]) | (q << shift));
    }
  }
  out[name + ".qweight"] = qweight;
  if (float_zeros(config))
    out[name + ".zeros"] = fzeros;
  else
    out[name + ".qzeros"] = qzeros;
  out[name + ".scales"] = out_scales;
  out[name + ".g_idx"] = g_idx;
}

}  // namespace anvil
