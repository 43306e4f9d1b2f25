// Quantized GEMV on the CPU (issue 17): quant_matmul at batch 1 for W4 (int4, group 128) and NF4
// (double-quantized absmax, block 64) against OpenBLAS sgemv on the same weight in f32, same
// thread count; then 8 rows (against the dense decode matmul, kernels/cpu/matmul_few_rows.cpp) and
// the input-grad GEMV dx = dy·W (against sgemv on Wᵀ).
//   OMP_NUM_THREADS=2 build/bin/quant_gemv_bench [repeats] [size ...]     (default 21, 4096 8192)
// A call reads the whole weight once: f32 is 4 bytes a weight, int4 g128 4.5 bits (codes, f32 scale
// and zero per 128), nf4 + double quant ~4.13 bits, so the byte ratio allows ~7-7.7x. Each case
// cycles through enough copies of its weight (≥ 96 MB together) that every call streams its
// weight from memory, not the 32 MB L3, as a model's decode step does. The cases are interleaved
// within each repetition (load drift hits them alike); medians of wall time and of process CPU
// time (with one thread the CPU time is robust to other load; with more it counts spin-waits).
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <functional>
#include <string>
#include <vector>

#include "kernels/cpu/quant_matmul.h"
#include "kernels/matmul.h"
#include "kernels/quant.h"

using namespace anvil;
using Clock = std::chrono::steady_clock;

namespace {

// ANVIL_BENCH_COLD_BYTES=1 runs every case on one copy (hot in cache when it fits).
const double kColdBytes =
    std::getenv("ANVIL_BENCH_COLD_BYTES") ? std::atof(std::getenv("ANVIL_BENCH_COLD_BYTES")) : 96e6;

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

Tensor random_matrix(int64_t rows, int64_t cols, uint32_t seed) {
  Tensor t = Tensor::empty({rows, cols});
  float* p = t.data<float>();
  uint64_t s = 0x9e3779b97f4a7c15ull * (seed + 1);
  for (int64_t i = 0; i < rows * cols; ++i) {  // xorshift: fast, and any values will do
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    p[i] = static_cast<float>(static_cast<int64_t>(s >> 40) - (1 << 23)) * (1.0f / (1 << 25));
  }
  return t;
}

kernels::QuantizedWeight clone(const kernels::QuantizedWeight& w) {
  kernels::QuantizedWeight c = w;
  for (Tensor* t : {&c.packed, &c.absmax, &c.absmax_codes, &c.absmax_scales, &c.scales, &c.zeros})
    if (t->defined()) *t = t->clone();
  return c;
}

int copies_for(double bytes) { return std::max(1, static_cast<int>((kColdBytes + bytes - 1) / bytes)); }

struct Case {
  std::string name;
  double bytes;               // weight bytes one call reads
  std::function<void(int)> run;  // the call on weight copy i (i cycles)
  int copies;
  std::vector<double> wall, cpu;
};

// Runs the cases interleaved, `repeats` times after one warm-up round; prints medians and the
// ratio of the group's first case (the dense baseline) to each.
void run_group(const char* title, std::vector<Case>& cases, int repeats) {
  for (int r = 0; r < repeats + 1; ++r)
    for (Case& c : cases) {
      const double c0 = cpu_ms();
      const auto t0 = Clock::now();
      c.run(r % c.copies);
      const double wall = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
      const double cpu = cpu_ms() - c0;
      if (r > 0) {
        c.wall.push_back(wall);
        c.cpu.push_back(cpu);
      }
    }
  std::printf("  %s\n", title);
  std::printf("    %-34s %9s %10s %8s %10s %8s %9s\n", "case", "MB/call", "wall ms", "x base", "cpu ms", "x base",
              "GB/s wall");
  const double base_wall = median(cases[0].wall), base_cpu = median(cases[0].cpu);
  for (const Case& c : cases) {
    const double w = median(c.wall), cp = median(c.cpu);
    std::printf("    %-34s %9.2f %10.3f %8.2f %10.3f %8.2f %9.2f\n", c.name.c_str(), c.bytes / 1e6, w,
                base_wall / w, cp, base_cpu / cp, c.bytes / w / 1e6);
  }
  std::fflush(stdout);
}

void run_size(int64_t n, int repeats) {
  std::printf("\n%ld x %ld (out x in), %d threads, %d repetitions\n", n, n, omp_get_max_threads(), repeats);
  const Tensor dense = random_matrix(n, n, static_cast<uint32_t>(n));
  const double dense_bytes = 4.0 * n * n;
  std::vector<Tensor> dense_copies{dense};
  while (dense_copies.size() < static_cast<size_t>(copies_for(dense_bytes))) dense_copies.push_back(dense.clone());

  const kernels::QuantizedWeight int4 = kernels::quantize_groupwise(dense, kernels::QuantScheme::Int4, 128, "bench");
  const kernels::QuantizedWeight nf4 = kernels::quantize_nf4(dense, true, 64, "bench");
  std::vector<kernels::QuantizedWeight> int4_copies{int4}, nf4_copies{nf4};
  while (int4_copies.size() < static_cast<size_t>(copies_for(int4.bytes()))) int4_copies.push_back(clone(int4));
  while (nf4_copies.size() < static_cast<size_t>(copies_for(nf4.bytes()))) nf4_copies.push_back(clone(nf4));
  std::printf("  weight bytes: f32 %.1f MB, int4 g128 %.1f MB (%.3f bits), nf4+dq %.1f MB (%.3f bits)\n",
              dense_bytes / 1e6, int4.bytes() / 1e6, 8.0 * int4.bytes() / (n * n), nf4.bytes() / 1e6,
              8.0 * nf4.bytes() / (n * n));

  for (int64_t rows : {1, 8}) {
    const Tensor x = random_matrix(rows, n, 7);
    Tensor y = Tensor::empty({rows, n});
    std::vector<Case> cases;
    if (rows == 1) {
      cases.push_back({"f32 sgemv (OpenBLAS)", dense_bytes, [&](int i) {
                         cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<blasint>(n), static_cast<blasint>(n),
                                     1.0f, dense_copies[i].data<float>(), static_cast<blasint>(n), x.data<float>(), 1,
                                     0.0f, y.data<float>(), 1);
                       }, static_cast<int>(dense_copies.size()), {}, {}});
    } else {
      cases.push_back({"f32 decode matmul (few rows)", dense_bytes, [&](int i) {
                         kernels::DecodeMatmulScope scope;
                         kernels::matmul(x, false, dense_copies[i], true, y);
                       }, static_cast<int>(dense_copies.size()), {}, {}});
    }
    for (bool scalar : {false, true}) {  // the scalar fallback at one row only (it is slow)
      if ((!scalar && !kernels::cpu::quant_avx2_active()) || (scalar && rows > 1)) continue;
      const std::string path = scalar ? " scalar" : " avx2";
      cases.push_back({"int4 g128 quant_matmul" + path, static_cast<double>(int4.bytes()), [&, scalar](int i) {
                         std::unique_ptr<kernels::cpu::ScalarQuantKernels> s;
                         if (scalar) s = std::make_unique<kernels::cpu::ScalarQuantKernels>();
                         kernels::quant_matmul(x, int4_copies[i], y);
                       }, static_cast<int>(int4_copies.size()), {}, {}});
      cases.push_back({"nf4+dq quant_matmul" + path, static_cast<double>(nf4.bytes()), [&, scalar](int i) {
                         std::unique_ptr<kernels::cpu::ScalarQuantKernels> s;
                         if (scalar) s = std::make_unique<kernels::cpu::ScalarQuantKernels>();
                         kernels::quant_matmul(x, nf4_copies[i], y);
                       }, static_cast<int>(nf4_copies.size()), {}, {}});
    }
    const std::string title = "forward y = x W^T, rows = " + std::to_string(rows);
    run_group(title.c_str(), cases, repeats);
  }

  // Input grad at one row: dx = dy W, i.e. sgemv on W^T.
  const Tensor dy = random_matrix(1, n, 9);
  Tensor dx = Tensor::empty({1, n});
  std::vector<Case> cases;
  cases.push_back({"f32 sgemv W^T (OpenBLAS)", dense_bytes, [&](int i) {
                     cblas_sgemv(CblasRowMajor, CblasTrans, static_cast<blasint>(n), static_cast<blasint>(n), 1.0f,
                                 dense_copies[i].data<float>(), static_cast<blasint>(n), dy.data<float>(), 1, 0.0f,
                                 dx.data<float>(), 1);
                   }, static_cast<int>(dense_copies.size()), {}, {}});
  cases.push_back({"int4 g128 input_grad avx2", static_cast<double>(int4.bytes()),
                   [&](int i) { kernels::quant_matmul_input_grad(dy, int4_copies[i], dx); },
                   static_cast<int>(int4_copies.size()), {}, {}});
  cases.push_back({"nf4+dq input_grad avx2", static_cast<double>(nf4.bytes()),
                   [&](int i) { kernels::quant_matmul_input_grad(dy, nf4_copies[i], dx); },
                   static_cast<int>(nf4_copies.size()), {}, {}});
  if (!kernels::cpu::quant_avx2_active()) cases.resize(1);
  run_group("input grad dx = dy W, rows = 1", cases, repeats);
}

}  // namespace

int main(int argc, char** argv) {
  const int repeats = argc > 1 ? std::atoi(argv[1]) : 21;
  std::vector<int64_t> sizes;
  for (int i = 2; i < argc; ++i) sizes.push_back(std::atoll(argv[i]));
  if (sizes.empty()) sizes = {4096, 8192};
  std::printf("quant_gemv_bench: AVX2/FMA kernels %s\n", kernels::cpu::quant_avx2_active() ? "on" : "off");
  for (int64_t n : sizes) run_size(n, repeats);
  return 0;
}
