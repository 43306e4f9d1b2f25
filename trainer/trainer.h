// Trainer: builds tokenizer, data, model and optimizer from a RunConfig, resumes
// from the newest checkpoint, and runs the loop (micro-batch accumulation, clipping,
// schedule, logging, validation, samples, checkpoints).
#pragma once
#include <cmath>
#include <cstdint>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "data/loader.h"
#include "data/tokenizer.h"
#include "models/transformer.h"
#include "optim/optimizer.h"
#include "trainer/config.h"

namespace anvil {

struct StepRecord {
  int64_t step = 0;  // 1-based: the optimizer step just taken
  double loss = 0;   // mean over the step's micro-batches
  double lr = 0;
  double grad_norm = 0;  // before clipping
  double tokens_per_s = 0;
  double ms = 0;
  double peak_mb = 0;  // host allocator high-water mark
};

// Train: writes the run directory and restores optimizer state. Inference (eval,
// generate): restores params only, writes nothing, prints nothing. Quiet: Train
// without console output (tests).
enum class TrainerMode { Train, Quiet, Inference };

class Trainer {
 public:
  // Validates the run against its files (tokenizer, store), builds everything and
  // restores the checkpoint chosen by checkpoint.resume.
  explicit Trainer(RunConfig config, TrainerMode mode = TrainerMode::Train);
  ~Trainer();

  // Trains until training.steps, or until `stop_at_step` (then saves a checkpoint so
  // a later run resumes exactly there).
  void train(int64_t stop_at_step = -1);
  // Mean validation loss over `batches` batches from the start of the split.
  double evaluate(int64_t batches);
  // A completion of `prompt` with the configured sampling settings, seeded by the step.
  std::string sample(const std::string& prompt, int64_t tokens);

  int64_t step() const { return step_; }
  // The validation loss of the latest periodic evaluation (NaN before the first).
  double last_validation_loss() const { return last_val_loss_; }
  const std::vector<StepRecord>& history() const { return history_; }
  TransformerLM& model() { return *model_; }
  const RunConfig& config() const { return config_; }
  // Entropy (nats/token) of the unigram distribution of the training tokens: the
  // loss of the best model that ignores context, the bar a real LM must clear.
  double unigram_entropy() const;
  std::string save();  // a checkpoint at the current step; returns its directory

 private:
  StepRecord train_step();
  void log(const StepRecord& r);
  void restore(const std::string& dir);

  RunConfig config_;
  TrainerMode mode_;
  bool verbose_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  std::shared_ptr<const TokenStore> store_;
  std::unique_ptr<Loader> train_loader_, valid_loader_;
  std::unique_ptr<TransformerLM> model_;
  std::vector<Param*> trainable_;
  std::unique_ptr<Optimizer> optimizer_;
  int64_t step_ = 0;
  double last_val_loss_ = std::nan("");
  std::vector<StepRecord> history_;
  std::ofstream metrics_;
};

}  // namespace anvil
