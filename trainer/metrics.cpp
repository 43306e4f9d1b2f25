#include "trainer/metrics.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/cuda_device.h"
#include "parallel/launch.h"
#include "trainer/tensorboard.h"
#include "trainer/trainer.h"

namespace anvil {

namespace fs = std::filesystem;

double training_flops_per_token(const ModelConfig& m, int64_t seq_len) {
  const double C = static_cast<double>(m.hidden_size), I = static_cast<double>(m.intermediate_size);
  const double L = static_cast<double>(m.num_hidden_layers), D = static_cast<double>(m.resolved_head_dim());
  const double H = static_cast<double>(m.num_attention_heads), Hkv = static_cast<double>(m.num_key_value_heads);
  const double projections = C * (H + 2 * Hkv) * D + H * D * C;
  const double mlp = (m.gated_mlp() ? 3 : 2) * C * I;
  const double head = C * static_cast<double>(m.vocab_size);
  const double attention = 2 * static_cast<double>(seq_len) * H * D;  // QK^T + AV, causal half, per layer
  return 3 * (2 * (L * (projections + mlp) + head) + L * attention);
}

namespace {
// Dense peak TFLOP/s per device for each precision anvil trains in (run.precision), from the
// vendors' data sheets: bf16 on tensor cores, fp32 on the CUDA cores (no TF32). 0 = not known
// (MFU is then 'unknown'). CPUs are absent on purpose: their peak depends on clocks and vector
// units we cannot read reliably, so it is 'unknown' unless logging.peak_tflops says.
struct PeakEntry {
  const char* name;
  double bf16, fp32;
};
const PeakEntry kPeaks[] = {
    {"H100 PCIe", 756, 51}, {"H100 NVL", 835, 60}, {"H100", 989, 67},    {"H200", 989, 67},
    {"GH200", 989, 67},     {"B200", 2250, 0},     {"A100", 312, 19.5},  {"A10G", 70, 0},
    {"A10", 125, 31.2},     {"L40S", 362, 91.6},   {"L4", 121, 30.3},    {"V100", 125, 15.7},
};
}  // namespace

PeakFlops lookup_peak_flops(const std::string& device, double override_tflops, const std::string& precision) {
  ANVIL_CHECK(precision == "bf16" || precision == "fp32", "lookup_peak_flops: precision '", precision,
              "' — use bf16 or fp32");
  PeakFlops p;
  p.device = device;
  if (override_tflops > 0) {
    p.tflops = override_tflops;
    p.basis = "logging.peak_tflops";
    return p;
  }
  size_t best = 0;
  for (const PeakEntry& e : kPeaks) {
    const std::string name = e.name;
    if (name.size() > best && device.find(name) != std::string::npos) {
      best = name.size();
      p.tflops = precision == "bf16" ? e.bf16 : e.fp32;
      p.basis = "table: " + name + (precision == "bf16" ? ", bf16 dense" : ", fp32 dense (no TF32)");
    }
  }
  return p;
}

std::string PeakFlops::describe() const {
  std::ostringstream s;
  if (known())
    s << "MFU against a peak of " << tflops << " TFLOP/s per device for '" << device << "' (" << basis << ")";
  else
    s << "MFU unknown: no peak figure for '" << device
      << "' in the table (GPUs only) — set logging.peak_tflops to the device's peak to get one";
  return s.str();
}

std::string device_name(Device device) {
  if (device.is_cuda()) return cuda_device_name(device.index);
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0 && line.find(':') != std::string::npos) {
      std::string name = line.substr(line.find(':') + 1);
      name.erase(0, name.find_first_not_of(' '));
      return "CPU " + name;
    }
  return "CPU (model unknown)";
}

StepSync sync_step(Communicator* world, bool stop_requested, double step_ms, double comm_ms) {
  StepSync s;
  if (!world || world->size() == 1) {
    s.stop = stop_requested;
    s.step_ms = {step_ms};
    s.comm_ms = {comm_ms};
    return s;
  }
  const int n = world->size();
  Tensor mine = Tensor::empty({3});
  mine.data<float>()[0] = stop_requested ? 1.f : 0.f;
  mine.data<float>()[1] = static_cast<float>(step_ms);
  mine.data<float>()[2] = static_cast<float>(comm_ms);
  Tensor all = Tensor::empty({3 * static_cast<int64_t>(n)});
  world->all_gather(mine, all);
  const float* a = all.data<float>();
  for (int r = 0; r < n; ++r) {
    s.stop = s.stop || a[3 * r] != 0.f;
    s.step_ms.push_back(a[3 * r + 1]);
    s.comm_ms.push_back(a[3 * r + 2]);
  }
  return s;
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int64_t s = static_cast<int64_t>(std::llround(seconds));
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%ldh%02ldm", long(s / 3600), long(s % 3600 / 60));
  else if (s >= 60) std::snprintf(buf, sizeof buf, "%ldm%02lds", long(s / 60), long(s % 60));
  else std::snprintf(buf, sizeof buf, "%lds", long(s));
  return buf;
}

namespace {

// Keeps the lines of metrics.jsonl up to `step` (a resumed run rewrites what came after).
void rewind_jsonl(const fs::path& path, int64_t step) {
  std::ifstream in(path);
  if (!in) return;
  std::vector<std::string> kept;
  std::string line;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_object() && j.contains("step") && j["step"].is_number_integer() && j["step"].get<int64_t>() <= step)
      kept.push_back(line);
  }
  in.close();
  std::ofstream out(path, std::ios::trunc);
  for (const auto& l : kept) out << l << "\n";
}

nlohmann::json number_or_null(double x) { return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(nullptr); }

}  // namespace

MetricsLogger::MetricsLogger(const RunConfig& config, Device device, bool writer, bool verbose, int64_t resume_step)
    : config_(config), writer_(writer), verbose_(verbose) {
  const std::string& mode = config.logging.progress;
  // mpirun hands every rank a pseudo-terminal even when its own output goes to a file: no redraws there.
  const bool terminal = isatty(STDOUT_FILENO) && launch_info().launcher != Launcher::Mpirun;
  progress_ = verbose && (mode == "always" || (mode == "auto" && terminal));
  peak_ = lookup_peak_flops(device_name(device), config.logging.peak_tflops, config.run.precision);
  flops_per_token_ = training_flops_per_token(config.model, config.data.seq_len);
  world_ = static_cast<int>(config.parallel.world_size());
  if (!writer_) return;
  const fs::path out(config.run.out_dir);
  fs::create_directories(out);
  if (config.logging.jsonl) {
    if (resume_step > 0) rewind_jsonl(out / "metrics.jsonl", resume_step);
    jsonl_.open(out / "metrics.jsonl", resume_step > 0 ? std::ios::app : std::ios::trunc);
  }
  if (config.logging.tensorboard) tb_ = std::make_unique<TensorBoardWriter>((out / "tensorboard").string());
}

MetricsLogger::~MetricsLogger() {
  if (progress_drawn_) std::printf("\n");
}

void MetricsLogger::print(const std::string& line) {
  if (!verbose_) return;
  if (progress_drawn_) std::printf("\r\033[K");
  progress_drawn_ = false;
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

void MetricsLogger::step(const StepRecord& r) {
  const auto now = std::chrono::steady_clock::now();
  if (first_step_ < 0) {
    first_step_ = r.step - 1;
    t_first_ = now - std::chrono::microseconds(static_cast<int64_t>(r.ms * 1e3));
  }
  const double elapsed = std::chrono::duration<double>(now - t_first_).count();
  const int64_t done = r.step - first_step_, total = config_.training.steps;
  const double eta = done > 0 ? elapsed / static_cast<double>(done) * static_cast<double>(total - r.step) : NAN;
  const double achieved_tflops = r.tokens_per_s * flops_per_token_ / 1e12 / world_;  // per device
  const double mfu = peak_.known() ? achieved_tflops / peak_.tflops : NAN;
  double comm_max = 0;
  for (double c : r.rank_comm_ms) comm_max = std::max(comm_max, c);

  if (jsonl_.is_open()) {
    nlohmann::json j = {{"step", r.step},           {"loss", r.loss},   {"lr", r.lr},
                        {"grad_norm", r.grad_norm}, {"tokens_per_s", r.tokens_per_s}, {"ms", r.ms},
                        {"peak_mb", r.peak_mb},     {"tflops_per_device", achieved_tflops},
                        {"mfu", number_or_null(mfu)}, {"eta_s", number_or_null(eta)},
                        {"rank_step_ms", r.rank_step_ms}, {"rank_comm_ms", r.rank_comm_ms},
                        {"skipped", r.skipped},     {"skipped_total", r.skipped_total}};
    if (r.skipped) j["skip_reason"] = r.guard_reason;
    for (const auto& [name, value] : r.task_metrics) j[name] = value;
    jsonl_ << j.dump() << "\n";
    jsonl_.flush();
  }
  if (tb_) {
    tb_->scalar("train/loss", r.step, r.loss);
    tb_->scalar("train/lr", r.step, r.lr);
    tb_->scalar("train/grad_norm", r.step, r.grad_norm);
    tb_->scalar("perf/tokens_per_s", r.step, r.tokens_per_s);
    tb_->scalar("perf/step_ms", r.step, r.ms);
    tb_->scalar("perf/comm_ms_max_rank", r.step, comm_max);
    tb_->scalar("perf/tflops_per_device", r.step, achieved_tflops);
    if (peak_.known()) tb_->scalar("perf/mfu", r.step, mfu);
    tb_->scalar("guard/skipped_total", r.step, static_cast<double>(r.skipped_total));
    for (const auto& [name, value] : r.task_metrics) tb_->scalar("task/" + name, r.step, value);
    tb_->flush();
  }
  if (!verbose_) return;
  if (r.skipped) print("step " + std::to_string(r.step) + " skipped by the numerics guard: " + r.guard_reason);
  const bool log_line = r.step % config_.logging.every == 0 || r.step == total || r.step == 1;
  if (log_line) {
    char buf[512];
    std::snprintf(buf, sizeof buf,
                  "step %6ld/%ld | loss %.4f | lr %.2e | grad norm %.3f | %8.0f tok/s | %7.1f ms (comm %.1f) | "
                  "peak %.0f MB | ETA %s",
                  long(r.step), long(total), r.loss, r.lr, r.grad_norm, r.tokens_per_s, r.ms, comm_max, r.peak_mb,
                  format_duration(eta).c_str());
    std::string line = buf;
    if (peak_.known()) {
      std::snprintf(buf, sizeof buf, " | MFU %.1f%%", 100 * mfu);
      line += buf;
    }
    if (world_ > 1 && r.rank_step_ms.size() > 1) {  // who is slow, and whether it is waiting on the others
      line += " | rank step/comm ms";
      for (size_t i = 0; i < r.rank_step_ms.size(); ++i) {
        std::snprintf(buf, sizeof buf, " %.0f/%.0f", r.rank_step_ms[i], r.rank_comm_ms[i]);
        line += buf;
      }
    }
    print(line);
  }
  if (progress_) {
    const int width = 24;
    const int filled = static_cast<int>(width * static_cast<double>(r.step) / static_cast<double>(total));
    std::printf("\r\033[K%s step %ld/%ld %3.0f%% | loss %.4f | %.0f tok/s | ETA %s",
                (std::string(filled, '#') + std::string(width - filled, '.')).c_str(), long(r.step), long(total),
                100.0 * r.step / total, r.loss, r.tokens_per_s, format_duration(eta).c_str());
    std::fflush(stdout);
    progress_drawn_ = true;
  }
}

void MetricsLogger::validation(int64_t step, double loss,
                               const std::vector<std::pair<std::string, double>>& task_metrics, bool perplexity) {
  if (jsonl_.is_open()) {
    nlohmann::json j{{"step", step}, {"val_loss", loss}};
    for (const auto& [name, value] : task_metrics) j["val_" + name] = value;
    jsonl_ << j.dump() << "\n";
    jsonl_.flush();
  }
  if (tb_) {
    tb_->scalar("val/loss", step, loss);
    for (const auto& [name, value] : task_metrics) tb_->scalar("val/" + name, step, value);
    tb_->flush();
  }
  char buf[128];
  std::snprintf(buf, sizeof buf, "step %6ld | validation loss %.4f", long(step), loss);
  std::string line = buf;
  if (perplexity) {
    std::snprintf(buf, sizeof buf, " | perplexity %.2f", std::exp(loss));
    line += buf;
  }
  for (const auto& [name, value] : task_metrics) {
    std::snprintf(buf, sizeof buf, " | %s %.4f", name.c_str(), value);
    line += buf;
  }
  print(line);
}

}  // namespace anvil
