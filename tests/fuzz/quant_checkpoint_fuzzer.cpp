// libFuzzer target: read_bnb_nf4 / read_gptq on a valid Linear's tensors (written by anvil's writers)
// after the input's edits: reshape, retype, drop or overwrite a companion tensor, replace the
// quant_state JSON or the GPTQ config with input text, add a stray tensor. A malformed Linear must be
// an anvil::Error; a read that succeeds must decode and survive write → read unchanged.
//
// Input: byte 0 picks the case (bnb plain/nested, GPTQ int4/int2, v1/v2, act order); then edits,
// each an op byte followed by its operands, until the input ends.
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "data/quant_checkpoint.h"

using namespace anvil;

namespace {

struct Reader {
  const uint8_t* p;
  size_t n;
  bool empty() const { return n == 0; }
  uint8_t byte() {
    if (n == 0) return 0;
    --n;
    return *p++;
  }
  std::string rest(size_t max) {
    const size_t k = std::min(n, max);
    std::string s(reinterpret_cast<const char*>(p), k);
    p += k;
    n -= k;
    return s;
  }
};

Tensor bytes_tensor(const std::string& s, DType dtype, const Shape& shape) {
  Tensor t = Tensor::zeros(shape, dtype);
  const size_t k = std::min(s.size(), t.nbytes());
  if (k > 0) std::memcpy(t.raw_data(), s.data(), k);
  return t;
}

std::string bytes_of(const Tensor& t) {
  return t.nbytes() == 0 ? std::string() : std::string(static_cast<const char*>(t.raw_data()), t.nbytes());
}

// Deterministic weights: the fuzzer explores the container, not the values.
Tensor weight(int64_t out, int64_t in) {
  Tensor w = Tensor::empty({out, in});
  for (int64_t i = 0; i < w.numel(); ++i) w.data<float>()[i] = static_cast<float>((i * 7919) % 211) / 105.0f - 1.0f;
  return w;
}

bool same(const Tensor& a, const Tensor& b) {
  if (a.defined() != b.defined()) return false;
  if (!a.defined()) return true;
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         std::memcmp(a.contiguous().raw_data(), b.contiguous().raw_data(), a.nbytes()) == 0;
}

bool same(const kernels::QuantizedWeight& a, const kernels::QuantizedWeight& b) {
  return a.scheme == b.scheme && a.out_features == b.out_features && a.in_features == b.in_features &&
         a.block == b.block && same(a.packed, b.packed) && same(a.absmax, b.absmax) &&
         same(a.absmax_codes, b.absmax_codes) && same(a.absmax_scales, b.absmax_scales) &&
         std::memcmp(&a.absmax_offset, &b.absmax_offset, sizeof(float)) == 0 && same(a.scales, b.scales) &&
         same(a.zeros, b.zeros);
}

void decode(const kernels::QuantizedWeight& w) {
  kernels::check_quantized_weight(w, "fuzz");  // a weight the reader returns is well-formed
  Tensor out = Tensor::empty({1, w.in_features});
  kernels::dequantize_rows(w, w.out_features - 1, w.out_features, out);
}

const DType kDtypes[] = {DType::F32, DType::F16, DType::BF16, DType::I32, DType::U8, DType::I8, DType::I64};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Reader in{data, size};
  const uint8_t mode = in.byte();
  const bool is_bnb = (mode & 1) == 0;
  TensorMap t;
  GptqConfig config;
  if (is_bnb) {
    write_bnb_nf4(kernels::quantize_nf4(weight(4, 128), (mode & 2) != 0, 64, "fuzz"), "bfloat16", "l", t);
  } else {
    config.bits = (mode & 2) ? 2 : 4;
    config.group_size = 32;
    config.desc_act = (mode & 4) != 0;
    config.checkpoint_format = (mode & 8) ? "gptq_v2" : (mode & 16) ? kAnvilFloatZeros : "gptq";
    const auto scheme = config.bits == 4 ? kernels::QuantScheme::Int4 : kernels::QuantScheme::Int2;
    Tensor perm;
    if (config.desc_act) {
      std::vector<int32_t> p(128);
      for (int32_t j = 0; j < 128; ++j) p[j] = (j * 37) % 128;
      perm = Tensor::from_vector(p, {128});
    }
    write_gptq(kernels::quantize_groupwise(weight(16, 128), scheme, 32, "fuzz"), perm, config, DType::F16, "l", t);
  }
  std::string config_text;
  while (!in.empty()) {
    const uint8_t op = in.byte() % 6;
    if (t.empty()) break;
    auto it = t.begin();
    std::advance(it, in.byte() % t.size());
    switch (op) {
      case 0: {  // new shape (1-3 dims), same dtype, old bytes where they fit
        Shape shape(1 + in.byte() % 3);
        for (int64_t& d : shape) d = in.byte() % 40;
        it->second = bytes_tensor(bytes_of(it->second), it->second.dtype(), shape);
        break;
      }
      case 1: {  // another dtype, same shape
        it->second = bytes_tensor(bytes_of(it->second), kDtypes[in.byte() % 7], it->second.shape());
        break;
      }
      case 2: t.erase(it); break;
      case 3: {  // overwrite bytes at an offset
        Tensor c = it->second.clone();
        const size_t at = in.byte() * 4u, k = in.byte() % 16;
        for (size_t i = 0; i < k && at + i < c.nbytes(); ++i) static_cast<uint8_t*>(c.raw_data())[at + i] = in.byte();
        it->second = c;
        break;
      }
      case 4: {  // text: the quant_state JSON (bnb) or the GPTQ config
        const std::string s = in.rest(1 + in.byte() * 4u);
        if (is_bnb) {
          t["l.weight.quant_state.bitsandbytes__nf4"] = bytes_tensor(s, DType::U8, {static_cast<int64_t>(s.size())});
        } else {
          config_text = s;
        }
        break;
      }
      case 5: {  // a stray companion tensor
        t["l.weight." + in.rest(in.byte() % 8)] = Tensor::zeros({2}, DType::U8);
        break;
      }
    }
  }
  try {
    if (is_bnb) {
      const BnbNF4Weight w = read_bnb_nf4(t, "l", "fuzz");
      decode(w.weight);
      TensorMap again;
      write_bnb_nf4(w.weight, w.dtype, "l", again);
      if (!same(read_bnb_nf4(again, "l", "again").weight, w.weight)) __builtin_trap();
    } else {
      if (!config_text.empty()) {
        config = parse_gptq_config(config_text, "fuzz config");
        config.sym = false;  // sym only constrains writing; the round trip below writes what was read
      }
      const GptqWeight w = read_gptq(t, "l", config, "fuzz");
      decode(w.weight);
      TensorMap again;
      write_gptq(w.weight, w.perm, config, DType::F32, "l", again);
      const GptqWeight back = read_gptq(again, "l", config, "again");
      if (!same(back.weight, w.weight) || !same(back.perm, w.perm)) __builtin_trap();
    }
  } catch (const Error&) {
  }
  return 0;
}
