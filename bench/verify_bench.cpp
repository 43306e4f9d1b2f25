// Cost of a speculative verification forward on the CPU: TransformerLM::forward_cached with
// T_new = 1, 2, 4, 5, 7 new tokens per row after a prefix in the KV cache, for rows of equal
// and of different lengths. Speculative decoding pays off when T_new = γ + 1 costs about as much
// as one decoding step (T_new = 1), i.e. when the step is bound by reading the weights.
//   OMP_NUM_THREADS=2 build/bin/verify_bench [repeats] [prefix]
// Prints ms per call (median of `repeats`, the T_new values interleaved so that load drift hits
// them alike) and the ratio to T_new = 1, for a ~35M-param Llama and the demo's size: wall time,
// and the process's CPU time (with one thread the CPU time is robust to other load on the machine;
// with more it counts the threads' spin-waits too).
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <vector>

#include "models/kv_cache.h"
#include "models/transformer.h"

using namespace anvil;
using Clock = std::chrono::steady_clock;

namespace {

struct Size {
  const char* name;
  int64_t hidden, layers, heads, kv_heads, intermediate, vocab;
};

double cpu_ms() {
  timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// One model size, one batch, equal or different row lengths: ms per forward_cached call per T_new.
void run_case(TransformerLM& model, int64_t B, bool ragged, int64_t prefix, int repeats,
              const std::vector<int64_t>& t_news) {
  const ModelConfig& c = model.config();
  const int64_t max_t = *std::max_element(t_news.begin(), t_news.end());
  KVCache kv(c, B, prefix + max_t);
  Tensor ids = Tensor::zeros({B, prefix}, DType::I32);
  for (int64_t i = 0; i < B * prefix; ++i) ids.data<int32_t>()[i] = static_cast<int32_t>(i * 7 % c.vocab_size);
  model.forward_cached(ids, kv, true);
  // Ragged rows: row b holds prefix - 5 b tokens (as after different acceptance lengths).
  std::vector<int64_t> lengths(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) lengths[static_cast<size_t>(b)] = ragged ? prefix - 5 * b : prefix;
  auto restore = [&] {
    for (int64_t b = 0; b < B; ++b) kv.truncate(b, lengths[static_cast<size_t>(b)]);
  };
  restore();
  std::vector<std::vector<double>> ms(t_news.size()), cpu(t_news.size());
  for (int r = 0; r < repeats + 1; ++r) {  // the first round warms up and is dropped
    for (size_t i = 0; i < t_news.size(); ++i) {
      const int64_t T = t_news[i];
      Tensor step = Tensor::zeros({B, T}, DType::I32);
      for (int64_t j = 0; j < B * T; ++j) step.data<int32_t>()[j] = static_cast<int32_t>((j * 13 + r) % c.vocab_size);
      const auto t0 = Clock::now();
      const double c0 = cpu_ms();
      model.forward_cached(step, kv);  // every position's logits, as verification needs
      const double c = cpu_ms() - c0;
      const double t = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
      if (r > 0) {
        ms[i].push_back(t);
        cpu[i].push_back(c);
      }
      restore();
    }
  }
  for (const auto* times : {&ms, &cpu}) {
    const double base = median((*times)[0]);
    std::printf("  B=%ld %-6s %-4s", B, ragged ? "ragged" : "equal", times == &ms ? "wall" : "cpu");
    for (size_t i = 0; i < t_news.size(); ++i) {
      const double m = median((*times)[i]);
      std::printf("  T=%ld %7.3f ms (x%.2f)", t_news[i], m, m / base);
    }
    std::printf("\n");
  }
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  const int repeats = argc > 1 ? std::atoi(argv[1]) : 15;
  const int64_t prefix = argc > 2 ? std::atoll(argv[2]) : 128;
  const std::vector<int64_t> t_news{1, 2, 4, 5, 7};
  const std::vector<Size> sizes{{"llama-35M", 512, 12, 8, 4, 1408, 4096}, {"demo", 256, 4, 4, 2, 704, 4096}};
  std::printf("forward_cached ms per call, median of %d, prefix %ld, %d OpenMP threads\n", repeats, prefix,
              omp_get_max_threads());
  for (const Size& s : sizes) {
    ModelConfig c = ModelConfig::llama();
    c.hidden_size = s.hidden;
    c.num_hidden_layers = s.layers;
    c.num_attention_heads = s.heads;
    c.num_key_value_heads = s.kv_heads;
    c.intermediate_size = s.intermediate;
    c.vocab_size = s.vocab;
    c.max_position_embeddings = 2048;
    TransformerLM model(c);
    model.init_weights(1);
    int64_t n_params = 0;
    for (Param* p : model.params()) n_params += p->value.numel();
    std::printf("%s: hidden %ld, %ld layers, %ld heads (%ld KV), intermediate %ld, vocab %ld: %.1fM params\n", s.name,
                s.hidden, s.layers, s.heads, s.kv_heads, s.intermediate, s.vocab, n_params / 1e6);
    for (int64_t B : {1, 4})
      for (bool ragged : {false, true})
        if (B > 1 || !ragged) run_case(model, B, ragged, prefix, repeats, t_news);
  }
  return 0;
}
