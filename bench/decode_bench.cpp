// KV-cache prefill/decode timing of a Llama on the CPU. bench/CMakeLists.txt (on
// main) builds every bench/*.cpp into build/bin; on a branch without it:
//   g++ -O3 -march=native -fopenmp -I. -I/usr/include/x86_64-linux-gnu/openblas-openmp -I/usr/include/hdf5/openmpi \
//       bench/decode_bench.cpp build/libanvil_core.a -L/usr/lib/x86_64-linux-gnu/openblas-openmp -lopenblas \
//       -o /tmp/decode_bench
//   OMP_NUM_THREADS=2 /tmp/decode_bench [hidden layers heads kv_heads vocab batch prompt new]
#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "eval/generate.h"

using namespace anvil;
using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  auto arg = [&](int i, int64_t d) { return argc > i ? std::atoll(argv[i]) : d; };
  ModelConfig c = ModelConfig::llama();
  c.hidden_size = arg(1, 256);
  c.num_hidden_layers = arg(2, 4);
  c.num_attention_heads = arg(3, 8);
  c.num_key_value_heads = arg(4, 4);
  c.vocab_size = arg(5, 4096);
  c.intermediate_size = c.hidden_size * 8 / 3 / 64 * 64;
  c.max_position_embeddings = 2048;
  const int64_t B = arg(6, 1), P = arg(7, 64), N = arg(8, 256);
  TransformerLM model(c);
  model.init_weights(1);
  int64_t n_params = 0;
  for (Param* p : model.params()) n_params += p->value.numel();

  KVCache kv(c, B, P + N);
  Tensor ids = Tensor::zeros({B, P}, DType::I32);
  for (int64_t i = 0; i < B * P; ++i) ids.data<int32_t>()[i] = static_cast<int32_t>(i * 7 % c.vocab_size);
  const auto t0 = Clock::now();
  model.forward_cached(ids, kv, true);
  const auto t1 = Clock::now();
  Tensor next = Tensor::zeros({B, 1}, DType::I32);
  for (int64_t s = 0; s < N; ++s) {
    next.data<int32_t>()[0] = static_cast<int32_t>(s % c.vocab_size);
    model.forward_cached(next, kv);
  }
  const auto t2 = Clock::now();
  const double prefill_ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
  const double decode_ms = std::chrono::duration<double, std::milli>(t2 - t1).count() / N;
  std::printf("llama d=%ld L=%ld H=%ld Hkv=%ld V=%ld (%.2fM params) B=%ld: prefill %ld tokens %.2f ms; "
              "decode %.3f ms/step over %ld steps (%.0f tokens/s)\n",
              c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.vocab_size,
              n_params / 1e6, B, P, prefill_ms, decode_ms, N, B * 1000.0 / decode_ms);

  const auto t3 = Clock::now();
  SamplingConfig s;
  s.top_k = 50;
  s.top_p = 0.9;
  s.seed = 1;
  const auto out = generate(model, {std::vector<int32_t>(P, 1)}, static_cast<int>(N), s);
  const double gen_ms = std::chrono::duration<double, std::milli>(Clock::now() - t3).count();
  std::printf("generate (top_k 50, top_p 0.9): %zu tokens in %.1f ms (%.3f ms/token incl. prefill)\n",
              out[0].size(), gen_ms, gen_ms / out[0].size());
  return 0;
}
