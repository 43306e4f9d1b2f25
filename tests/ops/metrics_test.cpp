// What a run reports: TensorBoard event files that TensorBoard's own reader accepts (CRCs
// checked) with the same scalars as metrics.jsonl, the terminal progress line, MFU only
// against a stated peak, `anvil plot`'s PNG (decoded independently in Python), and the
// numerics guard stopping or skipping on every rank alike.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <map>

#include "core/checksum.h"
#include "tests/ops/ops_support.h"
#include "tests/support/tiny_run.h"
#include "trainer/exit_codes.h"

using namespace anvil::ops_test;
using anvil::testing::make_tiny_run;
using anvil::testing::run_command;
namespace fs = std::filesystem;

namespace {
const std::string kAnvil = ANVIL_BINARY;
const std::string kPython = ANVIL_PYPI_PYTHON;  // sees PyPI's tensorboard (scripts/install_deps.sh)
const std::string kReader = std::string(ANVIL_SOURCE_DIR) + "/tests/ops/read_tensorboard.py";
}  // namespace

TEST(Metrics, Crc32cMatchesPublishedVectors) {
  // RFC 3720 appendix B.4 and the common check value.
  EXPECT_EQ(anvil::crc32c("123456789", 9), 0xE3069283u);
  const std::string zeros(32, '\0'), ones(32, '\xff');
  EXPECT_EQ(anvil::crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  EXPECT_EQ(anvil::crc32c(ones.data(), ones.size()), 0x62A8AB43u);
}

TEST(Metrics, TensorBoardReadsTheEventFilesWithTheScalarsOfMetricsJsonl) {
  const auto run = make_tiny_run("metrics_tb");
  std::string out;
  ASSERT_EQ(run_command(kAnvil + " train " + run.config + " --set training.steps=12 --set training.eval_every=6", out),
            0)
      << out;
  const std::string logdir = run.dir + "/run/tensorboard";
  ASSERT_EQ(run_command(kPython + " " + kReader + " " + logdir + " 2>/dev/null", out), 0) << out;
  const auto tb = nlohmann::json::parse(out);
  for (const char* tag : {"train/loss", "train/lr", "train/grad_norm", "perf/tokens_per_s", "perf/step_ms",
                          "val/loss", "guard/skipped_total"})
    EXPECT_TRUE(tb.contains(tag)) << tag << " missing: " << out;
  const auto lines = step_lines(run.dir + "/run/metrics.jsonl");
  ASSERT_EQ(lines.size(), 12u);
  ASSERT_EQ(tb["train/loss"].size(), 12u);
  for (size_t i = 0; i < lines.size(); ++i) {  // TensorBoard scalars are float32
    EXPECT_EQ(tb["train/loss"][i][0].get<int64_t>(), lines[i].step);
    EXPECT_EQ(static_cast<float>(tb["train/loss"][i][1].get<double>()), static_cast<float>(lines[i].loss));
    EXPECT_EQ(static_cast<float>(tb["train/lr"][i][1].get<double>()), static_cast<float>(lines[i].lr));
  }
  ASSERT_EQ(tb["val/loss"].size(), 2u);
  EXPECT_EQ(tb["val/loss"][1][0].get<int64_t>(), 12);

  // The reader really checks the framing: one flipped byte and it refuses the file.
  const fs::path bad = run.dir + "/bad_tb";
  fs::create_directories(bad);
  for (const auto& e : fs::directory_iterator(logdir)) {
    std::string bytes = read_text(e.path().string());
    bytes[bytes.size() / 2] = static_cast<char>(bytes[bytes.size() / 2] ^ 0x40);
    std::ofstream(bad / e.path().filename(), std::ios::binary) << bytes;
  }
  EXPECT_NE(run_command(kPython + " " + kReader + " " + bad.string(), out), 0) << out;
  EXPECT_NE(out.find("crc32 check"), std::string::npos) << out;
}

TEST(Metrics, ProgressLineShowsStepTotalEtaThroughputAndLoss) {
  const auto run = make_tiny_run("metrics_progress");
  std::string out;
  ASSERT_EQ(run_command(kAnvil + " train " + run.config + " --set training.steps=6 --set logging.progress=always", out),
            0)
      << out;
  EXPECT_NE(out.find("\r\033[K"), std::string::npos) << out;  // redrawn in place
  EXPECT_NE(out.find(" step 6/6 100% | loss "), std::string::npos) << out;
  EXPECT_NE(out.find(" tok/s | ETA "), std::string::npos) << out;
  // Never on a pipe unless asked.
  ASSERT_EQ(run_command(kAnvil + " train " + run.config + " --set training.steps=7", out), 0) << out;
  EXPECT_EQ(out.find("\r"), std::string::npos) << out;
}

TEST(Metrics, MfuIsUnknownOnACpuUnlessThePeakIsGiven) {
  const auto run = make_tiny_run("metrics_mfu");
  std::string out;
  ASSERT_EQ(run_command(kAnvil + " train " + run.config + " --set training.steps=3 --set schedule.warmup_steps=0", out), 0) << out;
  EXPECT_NE(out.find("MFU unknown: no peak figure for 'CPU "), std::string::npos) << out;
  EXPECT_EQ(out.find("| MFU "), std::string::npos) << out;
  auto j = nlohmann::json::parse(read_text(run.dir + "/run/metrics.jsonl").substr(0, read_text(run.dir + "/run/metrics.jsonl").find('\n')));
  EXPECT_TRUE(j["mfu"].is_null());

  ASSERT_EQ(run_command(kAnvil + " train " + run.config + " --set training.steps=3 --set schedule.warmup_steps=0 --set logging.peak_tflops=0.25 "
                        "--set checkpoint.resume=none", out), 0) << out;
  EXPECT_NE(out.find("MFU against a peak of 0.25 TFLOP/s per device for 'CPU "), std::string::npos) << out;
  EXPECT_NE(out.find("(logging.peak_tflops)"), std::string::npos) << out;
  EXPECT_NE(out.find("| MFU "), std::string::npos) << out;
  const std::string text = read_text(run.dir + "/run/metrics.jsonl");
  j = nlohmann::json::parse(text.substr(0, text.find('\n')));
  ASSERT_TRUE(j["mfu"].is_number());
  EXPECT_NEAR(j["mfu"].get<double>(), j["tflops_per_device"].get<double>() / 0.25, 1e-12);
}

TEST(Metrics, PlotDrawsTheFallingLossAsAPng) {
  const auto run = make_tiny_run("metrics_plot");
  std::string out;
  ASSERT_EQ(run_command(kAnvil + " train " + run.config + " --set training.steps=40 --set training.eval_every=10", out), 0)
      << out;
  ASSERT_EQ(run_command(kAnvil + " plot " + run.dir + "/run", out), 0) << out;
  const std::string png = run.dir + "/run/curves.png";
  ASSERT_TRUE(fs::exists(png)) << out;
  // Decoded with Python's zlib (not our code): size, and where the training-loss colour lies.
  const std::string script = run.dir + "/decode.py";
  std::ofstream(script) << R"(import struct, sys, zlib
data = open(sys.argv[1], 'rb').read()
assert data[:8] == b'\x89PNG\r\n\x1a\n'
pos, idat, w, h = 8, b'', 0, 0
while pos < len(data):
    n, = struct.unpack('>I', data[pos:pos+4]); kind = data[pos+4:pos+8]; body = data[pos+8:pos+8+n]
    assert zlib.crc32(kind + body) == struct.unpack('>I', data[pos+8+n:pos+12+n])[0]
    if kind == b'IHDR': w, h = struct.unpack('>II', body[:8])
    if kind == b'IDAT': idat += body
    pos += 12 + n
raw = zlib.decompress(idat); stride = 3 * w + 1
def px(x, y): o = y * stride + 1 + 3 * x; return raw[o] << 16 | raw[o+1] << 8 | raw[o+2]
rows = {}
for y in range(300):
    for x in range(w):
        if px(x, y) == 0x1F77B4: rows.setdefault(x, []).append(y)
xs = sorted(rows)
left = [sum(rows[x]) / len(rows[x]) for x in xs[:len(xs) // 5]]
right = [sum(rows[x]) / len(rows[x]) for x in xs[-len(xs) // 5:]]
val = sum(1 for y in range(300) for x in range(w) if px(x, y) == 0xFF7F0E)
print(w, h, len(xs), sum(left) / len(left), sum(right) / len(right), val)
)";
  ASSERT_EQ(run_command(kPython + " " + script + " " + png, out), 0) << out;
  int w = 0, h = 0, columns = 0, valid_pixels = 0;
  double left_row = 0, right_row = 0;
  ASSERT_EQ(std::sscanf(out.c_str(), "%d %d %d %lf %lf %d", &w, &h, &columns, &left_row, &right_row, &valid_pixels), 6)
      << out;
  EXPECT_EQ(w, 960);
  EXPECT_EQ(h, 900);
  EXPECT_GT(columns, 600) << "the training curve spans the panel";
  const auto lines = step_lines(run.dir + "/run/metrics.jsonl");
  ASSERT_LT(lines.back().loss, lines.front().loss);
  EXPECT_GT(right_row, left_row + 50) << "a falling loss is drawn lower on the right (rows grow downwards)";
  EXPECT_GT(valid_pixels, 0) << "validation points";
  EXPECT_NE(run_command(kAnvil + " plot " + run.dir, out), 0);  // not a run directory
  EXPECT_NE(out.find("metrics.jsonl not found"), std::string::npos) << out;
}

TEST(Metrics, NumericsGuardStopsWithTheStepNumber) {
  const auto run = make_tiny_run("guard_stop");
  std::string out;
  // A learning rate of 1000 without clipping blows the weights up within a few steps.
  const std::string diverge = " --set optimizer.lr=1000 --set optimizer.grad_clip=0 --set schedule.warmup_steps=0"
                              " --set training.steps=40";
  EXPECT_EQ(run_command(kAnvil + " train " + run.config + diverge, out), anvil::kExitNumerics) << out;
  EXPECT_EQ(occurrences(out, "error: numerics guard stopped the run at step "), 1) << out;
  EXPECT_NE(out.find(" is nan"), std::string::npos) << out;
  // The stop step is the first step not in metrics.jsonl.
  const auto lines = step_lines(run.dir + "/run/metrics.jsonl");
  ASSERT_FALSE(lines.empty());
  EXPECT_NE(out.find("at step " + std::to_string(lines.back().step + 1) + ":"), std::string::npos) << out;
}

TEST(Metrics, NumericsGuardSkipsOnEveryRankAliveThenStops) {
  const auto run = make_tiny_run("guard_skip");
  std::string out;
  const int rc = run_command(std::string(kMpiEnv) + " timeout 120 mpirun --oversubscribe --bind-to none -np 2 " +
                                 kAnvil + " train " + run.config +
                                 " --set parallel.dp=2 --set training.micro_batch_size=2 --set run.threads=1"
                                 " --set optimizer.lr=1000 --set optimizer.grad_clip=0 --set schedule.warmup_steps=0"
                                 " --set training.steps=40 --set guard.on_nonfinite=skip"
                                 " --set guard.max_consecutive_skips=3",
                             out);
  EXPECT_EQ(rc, anvil::kExitNumerics) << out;
  EXPECT_EQ(occurrences(out, "skipped by the numerics guard"), 3) << out;
  EXPECT_EQ(occurrences(out, "4 skipped steps in a row (guard.max_consecutive_skips = 3)"), 1) << out;
  const std::string text = read_text(run.dir + "/run/metrics.jsonl");
  EXPECT_EQ(occurrences(text, "\"skipped\":true"), 3) << text;
  EXPECT_EQ(occurrences(text, "\"skipped_total\":3"), 1) << text;
}
