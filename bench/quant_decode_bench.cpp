// End-to-end decode speed of a quantized model against its f32 self, in one process: the model of
// a checkpoint (or Hugging Face directory) is loaded dense, timed at batch-1 KV-cached decoding,
// then quantized on load (trainer/quant.h: every Linear but lm_head) to NF4 with double
// quantization and to INT4 (group 128, or the last argument) in turn and timed the same way. Each timing is the median of
// `repeats` runs of `new` decode steps after a `prompt`-token prefill; the same thread count throughout.
//   build/bin/quant_decode_bench CHECKPOINT [prompt 32] [new 64] [repeats 5] [int4 group 128]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "models/kv_cache.h"
#include "trainer/load_model.h"
#include "trainer/quant.h"

using namespace anvil;
using Clock = std::chrono::steady_clock;

namespace {
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// ms per decoded token (median over repeats) and the bytes the Linear weights cost.
struct Timing {
  double ms_per_token = 0;
  double linear_bytes = 0;
};

Timing time_decode(TransformerLM& model, int64_t prompt, int64_t steps, int repeats) {
  const ModelConfig& c = model.config();
  std::vector<double> runs;
  for (int r = 0; r < repeats; ++r) {
    KVCache kv(c, 1, prompt + steps);
    Tensor ids = Tensor::zeros({1, prompt}, DType::I32);
    for (int64_t i = 0; i < prompt; ++i) ids.data<int32_t>()[i] = static_cast<int32_t>((i * 7 + 3) % c.vocab_size);
    model.forward_cached(ids, kv, true);
    Tensor next = Tensor::zeros({1, 1}, DType::I32);
    const auto t0 = Clock::now();
    for (int64_t s = 0; s < steps; ++s) {
      next.data<int32_t>()[0] = static_cast<int32_t>((s * 13 + 5) % c.vocab_size);
      model.forward_cached(next, kv);
    }
    runs.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count() / steps);
  }
  Timing t;
  t.ms_per_token = median(runs);
  std::vector<LinearWeight*> linears;
  model.collect_linears(linears);
  for (LinearWeight* lw : linears) {
    if (lw->tied()) continue;
    if (lw->quantized()) t.linear_bytes += lw->quantized_weight().bytes();
    else t.linear_bytes += lw->weight().value.numel() * 4.0;
  }
  return t;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CHECKPOINT [prompt 32] [new 64] [repeats 5] [int4 group 128]\n", argv[0]);
    return 2;
  }
  const std::string path = argv[1];
  const int64_t prompt = argc > 2 ? std::atoll(argv[2]) : 32, steps = argc > 3 ? std::atoll(argv[3]) : 64;
  const int repeats = argc > 4 ? std::atoi(argv[4]) : 5;
  const int64_t group = argc > 5 ? std::atoll(argv[5]) : 128;
  try {
    struct Variant {
      const char* label;
      const char* scheme;
      int64_t block;
      bool double_quant;
    };
    const Variant variants[] = {{"f32", "none", 0, false}, {"nf4+dq", "nf4", 64, true}, {"int4", "int4", group, false}};
    double base_ms = 0;
    for (const Variant& v : variants) {
      LoadedModel loaded = load_model(path);
      RunConfig config = loaded.config;
      config.quant.scheme = v.scheme;
      config.quant.block = v.block;
      config.quant.double_quant = v.double_quant;
      quantize_model(*loaded.model, config, nullptr, nullptr);
      const Timing t = time_decode(*loaded.model, prompt, steps, repeats);
      if (base_ms == 0) base_ms = t.ms_per_token;
      std::printf("%-10s decode %.3f ms/token (%.1f tokens/s), %.2fx f32; Linear weights %.1f MB\n", v.label,
                  t.ms_per_token, 1000.0 / t.ms_per_token, base_ms / t.ms_per_token, t.linear_bytes / 1e6);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
