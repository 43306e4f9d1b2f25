// GPU training throughput of anvil: GPT-2 124M and a ~1B Llama, bf16 mixed precision (bf16
// compute copies, f32 master weights, fused AdamW), the same shapes bench/torch_gpu_train.py
// runs in PyTorch. Steps after the warm-up are timed with CUDA events on the compute stream;
// forward, backward and optimizer are timed separately too (events between the phases).
// bench/run_gpu_bench.sh runs both back to back and records the ratios.
//
// Model FLOPs per token are trainer/metrics.h's training_flops_per_token: 6 per matmul weight
// (projections, MLP and LM head; embeddings, norms and activations not counted) plus causal
// attention 6 * layers * T * (heads * head_dim) (QK^T and AV, forward and backward, half the
// square). MFU is stated against the peak lookup_peak_flops names for this device.
//
// usage: gpu_train_throughput --preset gpt2-124m|llama-1b [--batch B] [--seq T] [--layers L]
//        [--steps 20] [--warmup 3] [--dtype bf16|f32] [--lr 1e-4]
// Prints a readable summary and one machine-readable line starting with RESULT.
// ANVIL_PROFILE_RANGE=1: cudaProfilerStart/Stop around the timed steps only, for
// `ncu --profile-from-start off` (bench/run_gpu_bench.sh uses it for the per-kernel times).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/cuda_device.h"
#include "models/transformer.h"
#include "optim/adamw.h"
#include "trainer/metrics.h"

#ifdef ANVIL_WITH_CUDA
#include <cuda_profiler_api.h>

#include "core/cuda/runtime.h"
#include "core/rng.h"
#endif

using namespace anvil;

namespace {

struct Options {
  std::string preset = "gpt2-124m";
  int64_t batch = 0, seq = 0, layers = 0, steps = 20, warmup = 3;
  std::string dtype = "bf16";
  double lr = 1e-4;
};

ModelConfig preset_config(const std::string& name) {
  if (name == "gpt2-124m") return ModelConfig::gpt2();  // 12 x 768, 12 heads, vocab 50257, T 1024, tied
  if (name == "llama-1b") {
    ModelConfig c = ModelConfig::llama();
    c.vocab_size = 32000;
    c.hidden_size = 2048;
    c.num_hidden_layers = 16;
    c.num_attention_heads = 32;
    c.num_key_value_heads = 8;
    c.intermediate_size = 5632;
    c.max_position_embeddings = 2048;
    c.tie_word_embeddings = false;
    return c;
  }
  ANVIL_FAIL("gpu_train_throughput: unknown --preset '", name, "' — use gpt2-124m or llama-1b");
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; i += 2) {
    const std::string flag = argv[i];
    ANVIL_CHECK(i + 1 < argc, "gpu_train_throughput: ", flag, " needs a value");
    const std::string v = argv[i + 1];
    if (flag == "--preset") o.preset = v;
    else if (flag == "--batch") o.batch = std::stoll(v);
    else if (flag == "--seq") o.seq = std::stoll(v);
    else if (flag == "--layers") o.layers = std::stoll(v);
    else if (flag == "--steps") o.steps = std::stoll(v);
    else if (flag == "--warmup") o.warmup = std::stoll(v);
    else if (flag == "--dtype") o.dtype = v;
    else if (flag == "--lr") o.lr = std::stod(v);
    else ANVIL_FAIL("gpu_train_throughput: unknown flag ", flag, " (see the usage at the top of the file)");
  }
  ANVIL_CHECK(o.dtype == "bf16" || o.dtype == "f32", "gpu_train_throughput: --dtype must be bf16 or f32, got ",
              o.dtype);
  ANVIL_CHECK(o.steps > 0 && o.warmup >= 1, "gpu_train_throughput: --steps must be > 0 and --warmup >= 1");
  return o;
}

}  // namespace

int main(int argc, char** argv) {
#ifndef ANVIL_WITH_CUDA
  (void)argc;
  (void)argv;
  std::fprintf(stderr, "gpu_train_throughput: this build has no CUDA backend (%s)\n",
               cuda_unavailable_reason().c_str());
  return 2;
#else
  try {
    const Options o = parse(argc, argv);
    if (cuda_device_count() == 0) {
      std::fprintf(stderr, "gpu_train_throughput: no CUDA device: %s\n", cuda_unavailable_reason().c_str());
      return 2;
    }
    ModelConfig c = preset_config(o.preset);
    const int64_t T = o.seq > 0 ? o.seq : c.max_position_embeddings;
    const int64_t B = o.batch > 0 ? o.batch : (o.preset == "gpt2-124m" ? 16 : 4);
    if (o.layers > 0) c.num_hidden_layers = o.layers;
    c.max_position_embeddings = std::max(c.max_position_embeddings, T);
    const Device dev = Device::cuda(0);
    const DType compute = o.dtype == "bf16" ? DType::BF16 : DType::F32;

    TransformerLM model(c);
    model.init_weights(1);
    model.to(dev, compute);
    AdamW opt(model.params(), AdamWConfig{});  // betas 0.9/0.95, wd 0.1 on matrices: as the torch peer
    int64_t n_params = 0;
    for (Param* p : model.params()) n_params += p->value.numel();

    Tensor ids = Tensor::empty({B, T}, DType::I32), targets = Tensor::empty({B, T}, DType::I32);
    PhiloxStream rng(7, 1);
    for (int64_t i = 0; i < ids.numel(); ++i) {
      ids.data<int32_t>()[i] = static_cast<int32_t>(rng.u32(2 * i) % c.vocab_size);
      targets.data<int32_t>()[i] = static_cast<int32_t>(rng.u32(2 * i + 1) % c.vocab_size);
    }
    // A model moved with to(device, dtype) takes ids on that device.
    const Tensor ids_d = ids.to(dev), targets_d = targets.to(dev);

    cudaStream_t stream = cuda::current_stream(0);
    cuda::Event e_start(true), e_fwd(true), e_bwd(true), e_opt(true);
    double fwd_ms = 0, bwd_ms = 0, opt_ms = 0;
    float loss = 0;
    auto step = [&](bool timed) {
      Cache cache;
      if (timed) e_start.record(stream);
      model.zero_grad();
      loss = model.forward_loss(ids_d, targets_d, cache);
      if (timed) e_fwd.record(stream);
      model.backward_loss(cache);
      if (timed) e_bwd.record(stream);
      opt.step(o.lr);
      if (timed) {
        e_opt.record(stream);
        e_opt.synchronize();
        fwd_ms += e_fwd.elapsed_ms(e_start);
        bwd_ms += e_bwd.elapsed_ms(e_fwd);
        opt_ms += e_opt.elapsed_ms(e_bwd);
      }
    };
    for (int64_t s = 0; s < o.warmup; ++s) step(false);  // cuDNN plans, cuBLASLt heuristics, allocator
    cuda::synchronize(0);
    cuda_allocator(0).reset_peak();

    const bool profile_range = std::getenv("ANVIL_PROFILE_RANGE") != nullptr;
    if (profile_range) cudaProfilerStart();
    cuda::Event t0(true), t1(true);
    t0.record(stream);
    for (int64_t s = 0; s < o.steps; ++s) step(true);
    t1.record(stream);
    t1.synchronize();
    if (profile_range) cudaProfilerStop();

    const double ms = t1.elapsed_ms(t0) / static_cast<double>(o.steps);
    const double tokens_per_s = static_cast<double>(B * T) / (ms / 1e3);
    const double tflops = tokens_per_s * training_flops_per_token(c, T) / 1e12;
    cudaDeviceProp prop{};
    ANVIL_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    const PeakFlops peak = lookup_peak_flops(prop.name, 0, o.dtype == "bf16" ? "bf16" : "fp32");
    const double mfu = peak.known() ? tflops / peak.tflops : 0;
    const double peak_gb = static_cast<double>(cuda_allocator(0).stats().peak_bytes) / 1e9;
    const double n = static_cast<double>(o.steps);

    std::printf("anvil %s on %s: %.1fM params, %s, B=%ld T=%ld, %ld warm-up + %ld timed steps, loss %.4f\n",
                o.preset.c_str(), prop.name, n_params / 1e6, o.dtype.c_str(), long(B), long(T), long(o.warmup),
                long(o.steps), loss);
    std::printf("anvil tokens/s %.0f  ms/step %.2f (forward %.2f, backward %.2f, optimizer %.2f)  "
                "model TFLOP/s %.1f  %s: %.1f%%  peak memory %.2f GB\n",
                tokens_per_s, ms, fwd_ms / n, bwd_ms / n, opt_ms / n, tflops, peak.describe().c_str(), 100 * mfu,
                peak_gb);
    std::printf("RESULT impl=anvil model=%s dtype=%s batch=%ld seq=%ld tokens_per_s=%.1f ms_per_step=%.3f "
                "tflops=%.2f mfu=%.4f peak_gb=%.2f loss=%.4f\n",
                o.preset.c_str(), o.dtype.c_str(), long(B), long(T), tokens_per_s, ms, tflops, mfu, peak_gb, loss);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gpu_train_throughput: %s\n", e.what());
    return 1;
  }
#endif
}
