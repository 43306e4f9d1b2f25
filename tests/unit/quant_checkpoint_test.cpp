// data/quant_checkpoint's checks: every malformed bitsandbytes or GPTQ Linear is one anvil::Error that
// names the tensor and what anvil supports (the numeric formats are checked against the numpy oracle
// in tests/parity/quant_hf_format_test.cpp).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "data/quant_checkpoint.h"
#include "tests/support/reference.h"

using namespace anvil;
using namespace anvil::testing;
using kernels::QuantScheme;

namespace {

const char* const kState = "l.weight.quant_state.bitsandbytes__nf4";

TensorMap bnb(bool nested) {
  TensorMap t;
  write_bnb_nf4(kernels::quantize_nf4(random_tensor({4, 128}, 7), nested, 64, "w"), "bfloat16", "l", t);
  return t;
}

Tensor bytes(const std::string& s) {
  Tensor t = Tensor::empty({static_cast<int64_t>(s.size())}, DType::U8);
  std::memcpy(t.raw_data(), s.data(), s.size());
  return t;
}

std::string text(const Tensor& t) { return std::string(static_cast<const char*>(t.raw_data()), t.numel()); }

// The quant_state JSON with `from` replaced by `to`.
TensorMap with_state(TensorMap t, const std::string& from, const std::string& to) {
  std::string s = text(t.at(kState));
  const size_t at = s.find(from);
  EXPECT_NE(at, std::string::npos) << s;
  s.replace(at, from.size(), to);
  t[kState] = bytes(s);
  return t;
}

std::string bnb_error(const TensorMap& t) { return error_of([&] { read_bnb_nf4(t, "l", "ckpt"); }); }

GptqConfig config(int bits = 4, int64_t group = 32, bool desc_act = false) { return {bits, group, desc_act, false, "gptq"}; }

TensorMap gptq(const GptqConfig& c = config()) {
  TensorMap t;
  const QuantScheme s = c.bits == 4 ? QuantScheme::Int4 : QuantScheme::Int2;
  write_gptq(kernels::quantize_groupwise(random_tensor({16, 128}, 8), s, c.group_size, "w"), Tensor(), c, DType::F16,
             "l", t);
  return t;
}

std::string gptq_error(const TensorMap& t, const GptqConfig& c = config()) {
  return error_of([&] { read_gptq(t, "l", c, "ckpt"); });
}

#define EXPECT_HAS(msg, part) EXPECT_NE((msg).find(part), std::string::npos) << (msg)

}  // namespace

TEST(QuantCheckpoint, BnbReadsWhatItWrites) {
  for (bool nested : {false, true}) {
    const TensorMap t = bnb(nested);
    EXPECT_EQ(detect_hf_quant_format(t, "l"), HfQuantFormat::BnbNF4);
    EXPECT_EQ(bnb_error(t), "(no error)");
    EXPECT_EQ(read_bnb_nf4(t, "l", "ckpt").weight.double_quant(), nested);
  }
  EXPECT_EQ(detect_hf_quant_format(TensorMap{{"l.weight", Tensor::zeros({2, 2})}}, "l"), HfQuantFormat::None);
}

TEST(QuantCheckpoint, BnbRejectsOtherFormatsNamingTheTensor) {
  TensorMap fp4 = bnb(false);
  fp4["l.weight.quant_state.bitsandbytes__fp4"] = fp4.at(kState);
  fp4.erase(kState);
  EXPECT_HAS(bnb_error(fp4), "'fp4' weight — anvil reads nf4 only");
  EXPECT_HAS(bnb_error(with_state(bnb(false), "\"blocksize\":64", "\"blocksize\":128")), "blocksize 128");
  EXPECT_HAS(bnb_error(with_state(bnb(false), "\"nf4\"", "\"fp4\"")), "quant_type is \"fp4\"");
  EXPECT_HAS(bnb_error(with_state(bnb(false), "\"bfloat16\"", "\"int8\"")), "dtype \"int8\"");
  EXPECT_HAS(bnb_error(with_state(bnb(false), "[4,128]", "[4,64]")), "must be [128, 1]");
  EXPECT_HAS(bnb_error(with_state(bnb(false), "[4,128]", "[4,96]")), "not a multiple of the block 64");
  EXPECT_HAS(bnb_error(with_state(bnb(false), "[4,128]", "[512]")), "[out_features, in_features]");
  EXPECT_HAS(bnb_error(with_state(bnb(false), "\"shape\"", "\"shapes\"")), "\"shapes\", which bitsandbytes");
  EXPECT_HAS(bnb_error(with_state(bnb(true), "\"nested_blocksize\":256", "\"nested_blocksize\":128")),
             "nested_blocksize 128");
  TensorMap nested = bnb(true);
  nested[kState] = bytes(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [4, 128],
      "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": "0.5"})");
  EXPECT_HAS(bnb_error(nested), "nested_offset is \"0.5\"");

  TensorMap t = bnb(false);
  t[kState] = bytes("{\"quant_type\": \"nf4\"");
  EXPECT_HAS(bnb_error(t), "not a JSON object");
  t = bnb(false);
  t.at("l.weight.quant_map").data<float>()[3] += 1e-3f;
  EXPECT_HAS(bnb_error(t), "'l.weight.quant_map' in ckpt is not the NF4 table (value 3");
  t = bnb(false);
  t.erase("l.weight.absmax");
  EXPECT_HAS(bnb_error(t), "has no 'l.weight.absmax'");
  t = bnb(false);
  t["l.weight.absmax"] = Tensor::zeros({8}, DType::U8);
  EXPECT_HAS(bnb_error(t), "'l.weight.absmax' in ckpt is u8 but must be f32");
  t = bnb(false);
  t["l.weight"] = Tensor::zeros({256, 1}, DType::I8);
  EXPECT_HAS(bnb_error(t), "LLM.int8");
  t = bnb(false);
  t["l.weight.SCB"] = Tensor::zeros({4});
  EXPECT_HAS(bnb_error(t), "'l.weight.SCB' in ckpt is not a tensor of bitsandbytes' nf4 quant_state");
  t = bnb(true);
  t.erase("l.weight.nested_absmax");
  EXPECT_HAS(bnb_error(t), "has no 'l.weight.nested_absmax'");

  // The nested map: bitsandbytes' torch construction may be an ulp or two off ours; more is not the map.
  t = bnb(true);
  float& v = t.at("l.weight.nested_quant_map").data<float>()[200];
  v = std::nextafter(v, 2.0f);
  EXPECT_EQ(bnb_error(t), "(no error)");
  v *= 1.001f;
  EXPECT_HAS(bnb_error(t), "not bitsandbytes' signed dynamic map (value 200");
}

TEST(QuantCheckpoint, GptqConfigParsing) {
  const GptqConfig c = parse_gptq_config(
      R"({"model_type": "llama", "quantization_config": {"quant_method": "gptq", "bits": 2, "group_size": -1,
          "desc_act": true, "format": "gptq_v2"}})", "config.json");
  EXPECT_EQ(c.bits, 2);
  EXPECT_EQ(c.group_size, -1);
  EXPECT_TRUE(c.desc_act);
  EXPECT_TRUE(c.sym);  // AutoGPTQ's default when absent
  EXPECT_EQ(c.checkpoint_format, "gptq_v2");
  EXPECT_EQ(parse_gptq_config(gptq_config_json(config(2, 64, true)), "q").group_size, 64);
  EXPECT_HAS(error_of([] { parse_gptq_config(R"({"bits": 3, "group_size": 128})", "q.json"); }), "GPTQ bits 3");
  EXPECT_HAS(error_of([] { parse_gptq_config(R"({"bits": 4})", "q.json"); }), "\"group_size\" is missing");
  EXPECT_HAS(error_of([] { parse_gptq_config(R"({"bits": 4, "group_size": 128, "checkpoint_format": "marlin"})", "q.json"); }),
             "checkpoint_format \"marlin\"");
  EXPECT_HAS(error_of([] { parse_gptq_config(R"({"bits": 4, "group_size": 128, "quant_method": "awq"})", "q.json"); }),
             "quant_method \"awq\"");
  EXPECT_HAS(error_of([] { parse_gptq_config("[1]", "q.json"); }), "q.json: not a JSON object");
}

TEST(QuantCheckpoint, GptqRejectsMalformedTensorsNamingThem) {
  EXPECT_EQ(gptq_error(gptq()), "(no error)");
  EXPECT_EQ(detect_hf_quant_format(gptq(), "l"), HfQuantFormat::Gptq);
  EXPECT_HAS(gptq_error(gptq(), config(2)), "the bits in the config (2) or the tensors are wrong");
  EXPECT_HAS(gptq_error(gptq(), config(4, 64)), "'l.qzeros' in ckpt has shape [4, 2] but must be [2, 2]");
  TensorMap t = gptq();
  t.erase("l.scales");
  EXPECT_HAS(gptq_error(t), "has no 'l.scales'");
  t = gptq();
  t["l.scales"] = Tensor::zeros({4, 16}, DType::I32);
  EXPECT_HAS(gptq_error(t), "'l.scales' in ckpt is i32");
  t = gptq();
  t["l.qweight"] = Tensor::zeros({15, 16}, DType::I32);
  EXPECT_HAS(gptq_error(t), "'l.qweight' in ckpt has 15 rows");
  t = gptq();
  t.at("l.g_idx").data<int32_t>()[5] = 9;
  EXPECT_HAS(gptq_error(t), "'l.g_idx' in ckpt[5] = 9 is not a group in [0, 4)");
  t = gptq();
  std::swap(t.at("l.g_idx").data<int32_t>()[0], t.at("l.g_idx").data<int32_t>()[127]);
  EXPECT_HAS(gptq_error(t), "desc_act false");
  EXPECT_EQ(gptq_error(t, config(4, 32, true)), "(no error)");
  t.at("l.g_idx").data<int32_t>()[0] = 0;
  EXPECT_HAS(gptq_error(t, config(4, 32, true)), "more than group_size 32 columns into group 0");
  t = gptq();
  t.at("l.scales").data<f16_t>()[3].bits = 0x7c00;  // +inf
  EXPECT_HAS(gptq_error(t), "'l.scales' in ckpt[0, 3] is inf");
  t = gptq();
  t.erase("l.g_idx");  // old checkpoints: groups i / g
  EXPECT_EQ(gptq_error(t), "(no error)");
}

TEST(QuantCheckpoint, GptqWriterRefusesWhatGptqCannotHold) {
  auto w = kernels::quantize_groupwise(random_tensor({8, 64}, 9), QuantScheme::Int4, 32, "w");
  TensorMap t;
  w.zeros.data<float>()[3] = 2.5f;  // a QA-LoRA merge
  EXPECT_HAS(error_of([&] { write_gptq(w, Tensor(), config(), DType::F16, "l", t); }),
             "zero point 2.5 at row 1, group 1 is not an integer");
  w.zeros.data<float>()[3] = 2.0f;
  EXPECT_HAS(error_of([&] { write_gptq(w, Tensor(), config(2), DType::F16, "l", t); }), "config bits 2");
  EXPECT_HAS(error_of([&] { write_gptq(w, Tensor(), config(4, 64), DType::F16, "l", t); }), "config group_size 64");
  std::vector<int32_t> p(64);
  for (int i = 0; i < 64; ++i) p[i] = 63 - i;
  EXPECT_HAS(error_of([&] { write_gptq(w, Tensor::from_vector(p, {64}), config(), DType::F16, "l", t); }),
             "config.desc_act is false");
  p[0] = 1;
  EXPECT_HAS(error_of([&] { write_gptq(w, Tensor::from_vector(p, {64}), config(4, 32, true), DType::F16, "l", t); }),
             "not a permutation");
  w.scales.data<float>()[0] = 1e6f;
  EXPECT_HAS(error_of([&] { write_gptq(w, Tensor(), config(), DType::F16, "l", t); }), "does not fit f16");
  EXPECT_EQ(error_of([&] { write_gptq(w, Tensor(), config(), DType::F32, "l", t); }), "(no error)");
  EXPECT_HAS(error_of([&] {
               write_bnb_nf4(kernels::quantize_nf4(random_tensor({2, 128}, 3), false, 128, "w"), "bfloat16", "l", t);
             }),
             "block 128");
}
