// CPU training throughput of anvil on a GPT-2 or Llama config (fp32, AdamW),
// plus the sgemm rate this machine reaches in the same run, so the achieved
// GFLOP/s can be read against it. bench/run_train_bench.sh runs this and the
// PyTorch peer (bench/torch_train.py) back to back on identical shapes.
//
// usage: train_throughput [--family gpt2|llama] [--hidden 256] [--layers 4]
//        [--heads 4] [--kv-heads 4] [--vocab 4096] [--seq 256] [--batch 8] [--steps 10]
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

#include "trainer/metrics.h"
#include "core/rng.h"
#include "kernels/matmul.h"
#include "models/transformer.h"
#include "optim/adamw.h"

using namespace anvil;

namespace {
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Model FLOPs per token for forward+backward: 6 per matmul weight (2 fwd, 4 bwd)
// plus causal attention 6 * L * T * C (QK^T and PV: 4*T*C fwd per token over the
// full square, halved by the mask, times 3 for fwd+bwd).
double sgemm_gflops(int64_t m, int64_t n, int64_t k) {
  Tensor a = Tensor::empty({m, k}), b = Tensor::empty({n, k}), c = Tensor::empty({m, n});
  PhiloxStream(1, 1).fill_uniform(a, -1, 1);
  PhiloxStream(1, 2).fill_uniform(b, -1, 1);
  kernels::matmul(a, false, b, true, c);
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = Clock::now();
    kernels::matmul(a, false, b, true, c);
    best = std::max(best, 2.0 * m * n * k / seconds_since(t0) / 1e9);
  }
  return best;
}
}  // namespace

int main(int argc, char** argv) {
  std::string family = "gpt2";
  int64_t hidden = 256, layers = 4, heads = 4, kv_heads = 4, vocab = 4096, seq = 256, batch = 8, steps = 10;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const char* v = argv[i + 1];
    if (flag == "--family") family = v;
    else if (flag == "--hidden") hidden = std::stoll(v);
    else if (flag == "--layers") layers = std::stoll(v);
    else if (flag == "--heads") heads = std::stoll(v);
    else if (flag == "--kv-heads") kv_heads = std::stoll(v);
    else if (flag == "--vocab") vocab = std::stoll(v);
    else if (flag == "--seq") seq = std::stoll(v);
    else if (flag == "--batch") batch = std::stoll(v);
    else if (flag == "--steps") steps = std::stoll(v);
    else { std::fprintf(stderr, "unknown flag %s\n", flag.c_str()); return 2; }
  }
  ModelConfig c = family == "gpt2" ? ModelConfig::gpt2() : ModelConfig::llama();
  c.vocab_size = vocab;
  c.hidden_size = hidden;
  c.num_hidden_layers = layers;
  c.num_attention_heads = heads;
  c.num_key_value_heads = family == "gpt2" ? heads : kv_heads;
  c.intermediate_size = family == "gpt2" ? 4 * hidden : (8 * hidden / 3 + 63) / 64 * 64;
  c.max_position_embeddings = seq;
  c.tie_word_embeddings = family == "gpt2";
  TransformerLM model(c);
  model.init_weights(1);
  AdamW opt(model.params(), AdamWConfig{});
  int64_t n_params = 0;
  for (Param* p : model.params()) n_params += p->value.numel();

  Tensor ids = Tensor::empty({batch, seq}, DType::I32), targets = Tensor::empty({batch, seq}, DType::I32);
  PhiloxStream rng(7, 1);
  for (int64_t i = 0; i < ids.numel(); ++i) {
    ids.data<int32_t>()[i] = static_cast<int32_t>(rng.u32(2 * i) % vocab);
    targets.data<int32_t>()[i] = static_cast<int32_t>(rng.u32(2 * i + 1) % vocab);
  }
  auto train_step = [&]() {
    Cache cache;
    model.zero_grad();
    const float loss = model.forward_loss(ids, targets, cache);
    model.backward_loss(cache);
    opt.step(1e-4);
    return loss;
  };
  train_step();  // warm-up: first-touch of every buffer, OpenBLAS thread start
  float loss = 0;
  const auto t0 = Clock::now();
  for (int64_t s = 0; s < steps; ++s) loss = train_step();
  const double elapsed = seconds_since(t0);
  const double tokens_per_s = static_cast<double>(batch * seq * steps) / elapsed;
  const double gflops = tokens_per_s * training_flops_per_token(c, seq) / 1e9;
  // The hot GEMM shape of this model: [B*T, C] x [C, 4C] (the MLP up-projection).
  const double peak = sgemm_gflops(batch * seq, c.intermediate_size, hidden);
  std::printf("anvil %s: %.2fM params, B=%ld T=%ld, %d threads, %ld steps, loss %.4f\n", family.c_str(),
              n_params / 1e6, long(batch), long(seq), omp_get_max_threads(), long(steps), loss);
  std::printf("anvil tokens/s %.1f  ms/step %.1f  model GFLOP/s %.1f  sgemm GFLOP/s %.1f (%.0f%% of sgemm)\n",
              tokens_per_s, 1e3 * elapsed / steps, gflops, peak, 100 * gflops / peak);
  return 0;
}
