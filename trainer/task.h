// Task: what a run trains (docs/architecture.md "Seams"; torchtitan's TrainSpec, Megatron-core's
// forward_step_func / loss_func split). The trainer owns the loop, the grid, the loaders,
// gradient reduction, clipping, the optimizer, checkpoints and logging, and knows nothing
// task-specific. A task owns:
//   - the run's models: one trainable TransformerLM and any number of frozen ones (a
//     distillation target, a quantized base), which cost their weights only (load_frozen_model);
//   - the step's micro-batches, made from the loader's batches;
//   - forward + loss and backward of one micro-batch, as the PipelineStage and PipelineLoss the
//     executor drives (parallel/pipeline_stage.h);
//   - the metrics it adds to metrics.jsonl;
//   - which params a checkpoint holds.
// Tasks register by name in make_task (task.cpp); `task.name` in the config picks one.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "data/loader.h"
#include "models/transformer.h"
#include "parallel/pipeline_stage.h"
#include "trainer/config.h"

namespace anvil {

// What the trainer gives a task to build and run its models with.
struct TaskEnv {
  const RunConfig* config = nullptr;
  ModelLayout layout;                    // this rank's split of the trainable model (tp, sp, stage)
  Device device = Device::cpu();         // where the models run
  DType compute = DType::F32;            // and their compute dtype
  Communicator* data_group = nullptr;    // dp x sp: the ranks whose loss-token counts sum (null when alone)
  Communicator* pp = nullptr;            // the pipeline's stages (null with one): a frozen model's own pipeline
};

class Task {
 public:
  virtual ~Task() = default;
  virtual std::string name() const = 0;

  // Checks the run's training data against the task before anything is built (sft needs a
  // store with loss masks); throws an Error naming the file and the fix.
  virtual void check_data(const RunConfig& config, const TokenStore& store) const {}
  // Adjusts the loaders' settings to what the task reads (e.g. document packing).
  virtual void configure_loader(LoaderConfig& loader) const {}

  // Builds the trainable model on the CPU in f32, initialised (and model.init_from loaded):
  // the trainer then restores a checkpoint into it, freezes it by training.trainable and moves
  // it to env.device. Frozen models are built here too, directly where they run. Called once.
  virtual void build(const TaskEnv& env) = 0;
  // The trainable model (after build): its trainable params are what the optimizer steps and
  // gradient reduction sums.
  virtual TransformerLM& model() = 0;
  // The pipeline stage of the trainable model that the executor drives.
  virtual PipelineStage& stage() = 0;

  // Turns the step's batches (host tensors, this rank's sequence-parallel slice) into
  // micro-batches on the device and returns the loss that scores them. training: with the
  // normalisers backward needs (a collective over env.data_group); false: forward only
  // (evaluation), each micro-batch's loss a mean over its own tokens.
  virtual PipelineLoss& prepare(const std::vector<Batch>& batches, bool training) = 0;
  // Before a training step's prepare(): the steps done so far (the checkpoint's count on resume),
  // for a task whose micro-batches depend on the step (distill's on-policy rows).
  virtual void begin_step(int64_t step) {}
  // After a training step: the task's own metrics, the same on every rank, written to
  // metrics.jsonl and TensorBoard (task/<name>) beside the loss.
  virtual std::vector<std::pair<std::string, double>> step_metrics() { return {}; }
  // After an evaluation pass (Trainer::evaluate): the task's metrics over it, the same on every
  // rank (a collective, like step_metrics), logged beside val_loss as val_<name> (val/<name>).
  virtual std::vector<std::pair<std::string, double>> eval_metrics() { return {}; }

  // Whether the loss is a cross-entropy in nats/token (lm, sft, distill with loss ce), so that
  // perplexity and the unigram-entropy bar mean something; false for a divergence.
  virtual bool loss_is_cross_entropy() const { return true; }

  // The params a checkpoint holds: the trainable model's (frozen models load from their own source).
  virtual std::vector<Param*> checkpoint_params() { return model().params(); }
  // The params training.trainable chooses among: the trainable model's, less any part of it the
  // task keeps frozen whatever the patterns say (an EAGLE drafter's shared embedding and head).
  virtual std::vector<Param*> tunable_params() { return model().params(); }
};

// The task config.task.name names (task_names() lists them; task router: the kind config.router.kind
// names); throws naming the choices otherwise.
std::unique_ptr<Task> make_task(const RunConfig& config);
// The same for a task at its section's defaults.
std::unique_ptr<Task> make_task(const std::string& name);

// The trainable causal LM of a run, built on the CPU in f32 for env.layout from config.model:
// weights from Philox (run.seed), then model.init_from's weights when given (a Hugging Face
// directory, or an anvil checkpoint: its params, not its optimizer state or data position).
std::unique_ptr<TransformerLM> build_trainable_lm(const TaskEnv& env);

}  // namespace anvil
