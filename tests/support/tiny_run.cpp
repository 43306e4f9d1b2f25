#include "tests/support/tiny_run.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include "core/error.h"
#include "data/prepare.h"
#include "data/tokenizer.h"
#include "trainer/trainer.h"

namespace anvil::testing {

namespace fs = std::filesystem;

TinyRun make_tiny_run(const std::string& name, const std::string& extra_yaml) {
  TinyRun r;
  r.dir = (fs::path(::testing::TempDir()) / ("anvil_" + name)).string();
  fs::remove_all(r.dir);
  fs::create_directories(r.dir);
  r.corpus = "/usr/share/common-licenses/GPL-3";
  std::ifstream in(r.corpus);
  ANVIL_CHECK(in.good(), "test corpus ", r.corpus, " is missing (Debian's base-files ships it)");
  std::stringstream text;
  text << in.rdbuf();
  std::vector<std::string> docs;
  std::string para, line;
  while (std::getline(text, line)) {
    if (line.find_first_not_of(" \t") == std::string::npos) {
      if (!para.empty()) docs.push_back(para);
      para.clear();
    } else {
      para += para.empty() ? line : "\n" + line;
    }
  }
  if (!para.empty()) docs.push_back(para);
  const Tokenizer tok = Tokenizer::train(docs, 512, 2, {"<|endoftext|>"});
  r.tokenizer = r.dir + "/tokenizer.json";
  tok.save(r.tokenizer);
  r.store = r.dir + "/gpl.h5";
  PrepareOptions o;
  o.inputs = {r.corpus};
  o.format = InputFormat::Text;
  o.eos_id = *tok.token_to_id("<|endoftext|>");
  o.tokenizer_hash = tok.hash_hex();
  o.vocab_size = tok.vocab_size();
  o.output = r.store;
  prepare_dataset(o, [&](const std::string& t) { return tok.encode(t); });
  r.config = r.dir + "/run.yaml";
  std::ofstream(r.config) << "run: {name: " << name << ", out_dir: " << r.dir << "/run, seed: 7, threads: 2}\n"
                          << "model: {type: llama, vocab_size: auto, hidden_size: 32, num_hidden_layers: 2,\n"
                          << "        num_attention_heads: 4, num_key_value_heads: 2, intermediate_size: 64,\n"
                          << "        max_position_embeddings: 64}\n"
                          << "data: {train: gpl.h5, seq_len: 32, valid_fraction: 0.05}\n"
                          << "tokenizer: {path: tokenizer.json}\n"
                          << "optimizer: {lr: 3.0e-3, weight_decay: 0.1, grad_clip: 1.0}\n"
                          << "schedule: {kind: cosine, warmup_steps: 4}\n"
                          << "training: {steps: 20, micro_batch_size: 4, grad_accum_steps: 2, eval_every: 10,\n"
                          << "           eval_batches: 2}\n"
                          << "checkpoint: {every: 0, keep: 2}\n"
                          << extra_yaml;
  return r;
}

TinyRun make_tiny_target_run(const std::string& name, int steps) {
  TinyRun r = make_tiny_run(name + "_" + std::to_string(getpid()));
  Trainer target(load_run_config(r.config, {"run.out_dir=" + r.dir + "/target", "training.steps=" + std::to_string(steps),
                                            "training.eval_every=0", "checkpoint.resume=none"}),
                 TrainerMode::Quiet);
  target.train();
  return r;
}

int run_command(const std::string& command, std::string& output) {
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  ANVIL_CHECK(pipe != nullptr, "cannot run ", command);
  output.clear();
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, pipe)) output.append(buf, n);
  const int status = pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string must_run(const std::string& command) {
  std::string out;
  const int rc = run_command(command, out);
  EXPECT_EQ(rc, 0) << command << "\n" << out;
  return out;
}

}  // namespace anvil::testing
