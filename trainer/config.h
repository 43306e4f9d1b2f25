// RunConfig: the typed tree behind `anvil train CONFIG.yaml [--set section.key=value ...]`.
// Every field is parsed and validated here, before anything is allocated.
//
// Sections and keys (defaults in brackets; trainer/README.md has an annotated example):
//   task:       name [lm] (lm: next-token prediction on packed windows | sft: the same on prompt/response
//               documents, the prompts' tokens masked out of the loss | distill: a drafter (the model
//               section) distilled from a frozen target, see distill:; trainer/task.h)
//   distill:    (task distill only; any other task refuses a key set away from its default)
//               target (required: an anvil checkpoint or run directory, or a Hugging Face directory;
//               frozen, sharded like the drafter), drafter [standalone] (standalone: the model section is
//               an ordinary LM; parallelspec: trainer/parallel_spec_rows.h; eagle: models/eagle_drafter.h), loss [forward_kl]
//               (forward_kl | reverse_kl | tvd | jsd | ce: hard-label cross-entropy on the data, then
//               target-generated text), temperature [1.0], top_k [0 = off], top_p [1.0 = off] (the
//               decoder's: the target's distribution is filtered by them, models/distill_loss.h;
//               reverse_kl takes no filter), gamma [4] (the draft length the simulated acceptance
//               length tau_sim is reported for); drafter eagle only (models/eagle_drafter.h): eagle_layers
//               [[] = {1, L/2, L-2}] (the three target layers whose outputs are fused), ttt_steps [3] (the
//               training-time-test steps unrolled: the drafter drafts from its own features); drafter
//               parallelspec only (trainer/parallel_spec_rows.h): parallel_tokens [4] (k learned mask
//               tokens), anchors_per_sequence [0 = as many as fit]; on_policy [0.0] (in [0, 1]: the share of each
//               training step's micro-batches whose second halves the current drafter samples, scored at
//               the sampled tokens; standalone drafter, tp = pp = sp = 1; trainer/on_policy.h); ce_weight [0.0] (>= 0:
//               loss = divergence + ce_weight x cross-entropy on the data's next tokens, LREC's KL + CE; not
//               with loss ce). With a lora (and quant) section the standalone drafter is model.init_from's
//               base, frozen (quantized) with adapters: LoRA distilled from the target (LREC, INT2.1)
//   medusa:     (task medusa only; trainer/medusa_task.h; needs model.init_from, the base) num_heads [3],
//               num_layers [1] (ResBlocks per head), stage [1] (1: Medusa-1, the backbone frozen and run
//               forward only | 2: Medusa-2, trained jointly), copy_lm_head [true] (W2 starts as the base's
//               lm_head), heads_coefficient [0.2] and decay [0.8] (head k's loss weighs
//               heads_coefficient * decay^k * s(step)), schedule [constant] (constant | linear | sine: the
//               ramp s), schedule_steps [0 = training.steps]; stage 2 only: lr_multiplier [4.0] (the heads'
//               lr over the backbone's), warmup_steps [0] (the first steps train the heads only),
//               backbone_loss [lm] (lm: cross-entropy on the data | self_distill: forward KL to the frozen
//               original model, model.init_from, on data it generated: `anvil data generate`)
//   lora:       (tasks lm, sft and distill with a standalone drafter; trainer/lora.h, models/lora.h) LoRA adapters on the Linear layers matched by
//               modules [[] = off] (globs over HF module names, PEFT's target_modules rule: a pattern matches a
//               name, or its tail after a dot, so q_proj matches every model.layers.N.self_attn.q_proj;
//               "all-linear" = every Linear but lm_head); needs model.init_from (the frozen base). r [64],
//               alpha [16] (QLoRA's and QA-LoRA's recipe, ALGORITHMS.md §9), dropout [0.0] (PEFT's and
//               QA-LoRA's default; the QLoRA paper used 0.1 up to 13B; one mask on cpu and cuda), rslora [false]
//               (scaling alpha / sqrt(r) instead of alpha / r), qa_group [0 = plain LoRA; g > 0: QA-LoRA, the
//               adapter reads the input average-pooled over groups of g]. Only the adapters train; a
//               checkpoint holds them and a quantized base's packed tensors: the dense base reloads from model.init_from.
//   quant:      (with lora; trainer/quant.h) a quantized frozen base: scheme [none] (none | nf4: QLoRA's NormalFloat4 in
//               blocks of 64 | int4 | int2: group-wise asymmetric, GPTQ/AWQ's), block [0 = nf4 64, int 128] (nf4's
//               absmax block; int: the group along in, 32/64/128), double_quant [true] (nf4 only), modules
//               [[all-linear]] and skip [[lm_head]] (lora.modules' glob rule). Applied on load to model.init_from's
//               dense weights; a checkpoint holds the packed codes and their scales as integer/f32 datasets.
//   router:     (task router only; trainer/router_task.h, trainer/router_backbone.h; needs model.init_from, the
//               frozen backbone) kind [mindskip] (mindskip: a Linear(d, 1) gate per layer on the mean of the normed
//               hidden state, straight-through threshold tau | drllm: skip / execute / repeat per layer, trained on
//               searched labels, trainer/drllm_task.h), layers [[] = the last n but the final one, L-1-n .. L-2],
//               n [16]; mindskip only: scope [attention] (attention | mlp | block: what a closed gate skips), unit
//               [sequence] (sequence | token), tau [0.5] (in (0, 1)), objective [lm] (lm: cross-entropy on the data
//               | kl: forward KL to the frozen backbone without routers), capacity_target [0.7] (in (0, 1]),
//               capacity_weight [0.0] (>= 0: lambda of lambda * relu(capacity - target) per micro-batch),
//               train_skipped [true] (training computes skipped units' sub-blocks too and multiplies them by
//               g = 0, so the LM loss reaches every router unit: no sticky skipping; inference always skips;
//               no effect on a token-unit attention);
//               drllm only: hidden [128], windows [8], search_budget [32] (>= 1 forward evaluations per
//               training sequence in the label search), focal_gamma [2.0] (>= 0)
//   run:        name [config file's stem], out_dir [runs/<name>], seed [1234], device [cpu] (cpu|cuda; each
//               rank uses GPU local_rank % visible GPUs), precision [bf16 on cuda, fp32 on cpu] (fp32|bf16:
//               the dtype of weights and activations; bf16 keeps f32 master weights, gradients and
//               optimizer state; cpu is fp32 only), threads [0 = all cores], peer_timeout [30] (seconds
//               without a heartbeat before another rank counts as lost and the job stops with exit code
//               69; 0 = no watchdog)
//   model:      config (a Hugging Face config.json, optional), type (gpt2|llama|qwen2|mistral) [llama], vocab_size
//               ("auto" or 0 = the tokenizer's), hidden_size, num_hidden_layers, num_attention_heads,
//               num_key_value_heads [= num_attention_heads], head_dim [hidden_size / heads],
//               intermediate_size [llama: 11008, gpt2: 4 * hidden_size], max_position_embeddings,
//               rope_theta, norm_eps, initializer_range, tie_word_embeddings, attention_bias, mlp_bias,
//               hidden_act, rope_scaling [none; or a map with config.json's keys], sliding_window [0; mistral
//               only]. Without `config` the defaults are ModelConfig::preset(type); with it
//               they are the file's values, and any field written next to `config` overrides the file.
//               init_from [""]: a Hugging Face directory (config.json, model.safetensors or a sharded
//               index, tokenizer.json), or an anvil checkpoint (a checkpoint directory, or a run
//               directory whose newest checkpoint is taken; stored as that checkpoint's directory);
//               its weights replace the fresh init (a resumed checkpoint still wins; an anvil
//               checkpoint's optimizer state and data position are not taken), its architecture is
//               the model's (as `config`; the two exclude each other).
//   data:       train (required; `none` = no data: the config can only serve generate/eval --set
//               data.train=..., as `anvil convert` writes it), seq_len [max_position_embeddings],
//               valid_fraction [0.01], shuffle [true], packing [none] (none | documents: attention
//               stays inside each document, positions restart; see data/loader.h)
//   tokenizer:  path (required; default with model.init_from: that directory's tokenizer.json)
//   optimizer:  name [adamw] (soap and cosmos need run.device: cpu for now), lr [1e-3], beta1 [0.9],
//               beta2 [0.95], eps [1e-8], weight_decay [0.1], decay_embeddings [false], decay_norms_and_biases [false], grad_clip [1.0; 0 = off],
//               zero [0] (0 | 1: optimizer state sharded over dp | 2: and gradients reduce-scattered;
//               no effect when dp = 1)
//   schedule:   kind [cosine] (constant|cosine|linear|wsd), warmup_steps [0], min_lr_ratio [0.1],
//               decay_fraction [0.2]; peak lr = optimizer.lr, total steps = training.steps
//   training:   steps (required), micro_batch_size [8], grad_accum_steps [1], trainable [["*"]],
//               eval_every [100; 0 = never], eval_batches [20], sample_every [0 = never], sample_prompt [""],
//               sample_tokens [64], sample_temperature [0.8; 0 = greedy], sample_top_k [40; 0 = off],
//               sample_top_p [1.0], ignore_index [-100]
//   parallel:   dp, tp, pp, sp [1 each], ep [1] (expert parallel, carved out of dp: divides dp; > 1
//               only for a model with experts), bucket_mb [25] (gradient all-reduce / reduce-scatter bucket
//               size in MB), pp_schedule [1f1b] (1f1b | gpipe; training.grad_accum_steps micro-batches
//               flow through the pipeline)
//   checkpoint: dir ["" = <out_dir>/checkpoints], every [500; 0 = only at the end], keep [3; 0 = all],
//               resume [auto] (auto | none | a checkpoint path), on_preempt [true] (SIGTERM/SIGUSR1: finish
//               the step, checkpoint, exit with code 75 so a batch script requeues; false = die at once)
//   guard:      on_nonfinite [stop] (skip | stop: a NaN/inf loss or gradient norm), spike_zscore [0 = off],
//               spike_window [100], on_spike [skip] (skip | stop), max_consecutive_skips [10; 0 = no limit]
//               (trainer/numerics_guard.h; stopping exits with code 65)
//   logging:    every [10], jsonl [true], tensorboard [true] (<out_dir>/tensorboard), progress [auto]
//               (auto = a redrawn progress line when stdout is a terminal | always | never), peak_tflops
//               [0 = the device table; MFU is 'unknown' for devices it lacks]
//
// Paths. Input files (model.config, data.train, tokenizer.path, checkpoint.resume) written in the YAML
// file are resolved relative to the YAML file's directory, so a config works from any working directory.
// Output directories (run.out_dir, checkpoint.dir) are relative to the current working directory.
// Any path given with --set is relative to the current working directory, as a shell user expects.
// All paths are stored absolute and normalised.
//
// Overrides. `--set section.key=value` parses `value` as YAML (numbers, bools, lists such as
// training.trainable=["model.layers.*","lm_head.*"], flow maps) and replaces that node of the YAML
// tree before typed parsing, so an override is validated exactly like the file; its errors name the
// --set argument. `--set section={...}` replaces a whole section. An empty value is the empty string.
//
// Errors are anvil::Error, one per problem found first, each naming where (file:line:column or the
// --set argument), the YAML path, the bad value and how to fix it; unknown keys suggest the closest
// valid key.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "models/config.h"
#include "optim/adamw.h"
#include "optim/cosmos.h"
#include "optim/muon.h"
#include "optim/soap.h"
#include "optim/schedule.h"
#include "trainer/numerics_guard.h"

namespace anvil {

class Communicator;
struct Param;

struct RunSection {
  std::string name;            // default: the config file's stem
  std::string out_dir;         // absolute; default: <cwd>/runs/<name>
  int64_t seed = 1234;         // >= 0
  std::string device = "cpu";  // cpu | cuda
  std::string precision = "fp32";  // fp32 | bf16 (default: bf16 on cuda, fp32 on cpu; bf16 needs cuda)
  int64_t threads = 0;         // 0 = all cores
  double peer_timeout = 30;    // seconds; 0 = no peer watchdog
};

// What the run trains (trainer/task.h): a registered task's name.
struct TaskSection {
  std::string name = "lm";  // lm | sft | distill | medusa | router (task_names() in trainer/task_names.h)
};

// task distill (trainer/distill_task.h): the frozen target and how the drafter is scored against it.
struct DistillSection {
  std::string target;                 // absolute path: an anvil checkpoint / run directory or a HF directory
  std::string drafter = "standalone";  // standalone | parallelspec | eagle
  std::string loss = "forward_kl";    // forward_kl | reverse_kl | tvd | jsd | ce
  double temperature = 1.0;           // > 0: the decoding temperature both distributions are taken at
  int64_t top_k = 0;                  // 0 = off
  double top_p = 1.0;                 // (0, 1]; 1 = off
  int64_t gamma = 4;                  // >= 1: draft length of the reported tau_sim
  // drafter parallelspec (trainer/parallel_spec_rows.h): the drafter's learned mask tokens k, and
  // the anchors given k masks each per training row (0 = as many as fit the model's positions).
  int64_t parallel_tokens = 4;        // >= 1
  int64_t anchors_per_sequence = 0;   // >= 0
  std::vector<int64_t> eagle_layers;  // drafter eagle: three target layers, empty = {1, L/2, L-2}
  int64_t ttt_steps = 3;              // drafter eagle: >= 1 training-time-test steps
  // [0, 1]: the share of each training step's micro-batches sampled from the current drafter
  // (on-policy distillation, DistillSpec; trainer/on_policy.h). Standalone drafter, tp = pp = sp = 1.
  double on_policy = 0.0;
  // >= 0: the loss is the divergence + ce_weight x the cross-entropy of the drafter's logits on the
  // data's next tokens (both per-token means; LREC's KL + CE, ALGORITHMS.md §9). 0 = divergence only.
  double ce_weight = 0.0;
};

// task medusa (trainer/medusa_task.h): K decoding heads on the model (model.init_from: the base).
struct MedusaSection {
  int64_t num_heads = 3;             // >= 1 (Medusa's released Vicuna recipe: 3; its model default 5)
  int64_t num_layers = 1;            // >= 0 ResBlocks per head
  int64_t stage = 1;                 // 1: Medusa-1, the backbone frozen | 2: Medusa-2, trained jointly
  bool copy_lm_head = true;          // W2 of every head starts as the base's lm_head (else a fresh normal draw)
  double heads_coefficient = 0.2;    // lambda_0: head k's loss weighs heads_coefficient * decay^k
  double decay = 0.8;                // > 0
  std::string schedule = "constant";  // constant | linear | sine: the ramp s(step) of the heads' weight
  int64_t schedule_steps = 0;        // the ramp's length in steps; 0 = training.steps
  // stage 2 only
  double lr_multiplier = 4.0;        // the heads step at lr x lr_multiplier
  int64_t warmup_steps = 0;          // the first steps train the heads only (the backbone frozen)
  std::string backbone_loss = "lm";  // lm: cross-entropy on the data | self_distill: forward KL to the
                                     // frozen original model (model.init_from) on the data (its own generations)
};

// task router (trainer/router_backbone.h): layer-skip routers trained on the frozen model.init_from
// backbone (ALGORITHMS.md §8). router_spec() turns it into the model's RouterSpec.
struct RouterSection {
  std::string kind = "mindskip";    // mindskip | drllm
  std::vector<int64_t> layers;      // global layer indices in [0, L-2]; empty = default_router_layers(L, n)
  int64_t n = 16;                   // >= 1: how many layers the default takes
  // mindskip
  std::string scope = "attention";  // attention | mlp | block: what a closed gate skips
  std::string unit = "sequence";    // sequence (decided on the mean over tokens) | token
  double tau = 0.5;                 // (0, 1): a gate runs iff sigmoid(w . xbar) >= tau
  std::string objective = "lm";     // lm: cross-entropy on the data | kl: forward KL to the unrouted backbone
  double capacity_target = 0.7;     // (0, 1]: the share of router units meant to run
  double capacity_weight = 0.0;     // >= 0: lambda of lambda * relu(capacity - target)
  bool train_skipped = true;        // training computes skipped units too (straight-through; RouterSpec::train_skipped)
  // drllm
  int64_t hidden = 128;             // >= 1: the router MLP's bottleneck width
  int64_t windows = 8;              // >= 1: windows of the windowed mean
  int64_t search_budget = 32;       // >= 1: forward evaluations per training sequence in the label search
  double focal_gamma = 2.0;         // >= 0: the focal loss's gamma
};

// LoRA adapters (trainer/lora.h) on the frozen model.init_from base, for tasks lm, sft and distill
// (standalone drafter).
struct LoraSection {
  std::vector<std::string> modules;  // globs over HF module names (PEFT's target_modules rule); empty = no LoRA
  int64_t r = 64;                    // >= 1
  double alpha = 16.0;               // > 0
  double dropout = 0.0;              // [0, 1) on the adapter's input, training only
  bool rslora = false;               // scaling alpha / sqrt(r) (rsLoRA) instead of alpha / r
  int64_t qa_group = 0;              // 0: plain LoRA | g > 0: QA-LoRA's pooling group along in
  // A PEFT adapter directory (trainer/peft_adapter.h) whose factors start the adapters; "" = fresh
  // (A Kaiming-uniform, B zero). Read when a run starts, not on resume: the checkpoint's win.
  std::string init_from;
  bool enabled() const { return !modules.empty(); }
};

// A quantized frozen base (trainer/quant.h, kernels/quant.h): the Linear layers matched by `modules`
// and by no `skip` pattern (lora.modules' glob rule) hold their weights quantized, for LoRA to train on.
struct QuantSection {
  std::string scheme = "none";                       // none | nf4 | int4 | int2
  int64_t block = 0;                                 // 0: the scheme's default, nf4 64 (bitsandbytes), int 128 (GPTQ)
  bool double_quant = true;                          // nf4: absmaxes as 8-bit codes (QLoRA's 4.127 bits)
  std::vector<std::string> modules = {"all-linear"};
  std::vector<std::string> skip = {"lm_head"};
  bool enabled() const { return scheme != "none"; }
};

// The architecture (ModelConfig, Hugging Face field names) plus where it came from.
struct ModelSection : ModelConfig {
  std::string config_file;       // absolute path of model.config, empty when inline (provenance only)
  std::string init_from;         // absolute path of a HF directory or anvil checkpoint whose weights start the run; "" = none
  bool vocab_size_auto = false;  // vocab_size: auto (vocab_size is 0 until resolve_vocab_size)
};

struct DataSection {
  std::string train;             // absolute path of the token store
  int64_t seq_len = 0;           // filled with model.max_position_embeddings when not given
  double valid_fraction = 0.01;  // [0, 1)
  bool shuffle = true;
  std::string packing = "none";  // none | documents (data/loader.h)
};

struct TokenizerSection {
  std::string path;  // absolute path of tokenizer.json
};

struct OptimizerSection {
  std::string name = "adamw";  // adamw | muon | soap | cosmos
  double lr = 1e-3;            // peak learning rate
  double grad_clip = 1.0;      // global grad-norm clip; 0 = off
  int64_t zero = 0;            // ZeRO stage over dp: 0 none, 1 optimizer state, 2 + gradients
  AdamWConfig adamw;           // beta1, beta2, eps, weight_decay, decay_embeddings, decay_vectors
  // muon | soap | cosmos: hidden matrices go to that optimizer, embeddings, the LM head,
  // norms and biases to AdamW (above) stepping at lr * adamw_lr_ratio; globs override.
  double adamw_lr_ratio = 1.0;  // default: 0.015 for muon (3e-4 / 0.02, Keller's pair), else 1
  std::vector<std::string> force_adamw, force_matrix;
  MuonConfig muon;
  SoapConfig soap;
  CosmosConfig cosmos;
};

struct TrainingSection {
  int64_t steps = 0;  // required, >= 1
  int64_t micro_batch_size = 8;
  int64_t grad_accum_steps = 1;
  std::vector<std::string> trainable{"*"};  // glob patterns over HF param names (core/glob.h)
  int64_t eval_every = 100;                 // 0 = never
  int64_t eval_batches = 20;
  int64_t sample_every = 0;  // 0 = never
  std::string sample_prompt;
  int64_t sample_tokens = 64;
  double sample_temperature = 0.8;  // 0 = greedy
  int64_t sample_top_k = 40;        // 0 = no top-k filter
  double sample_top_p = 1.0;        // (0, 1]; 1 = no nucleus filter
  int64_t ignore_index = -100;      // target id the loss skips; negative so it never is a real token
};

struct ParallelSection {
  int64_t dp = 1, tp = 1, pp = 1, sp = 1;
  int64_t ep = 1;  // expert parallel: splits dp (parallel/grid.h), so not a factor of world_size
  double bucket_mb = 25.0;  // data-parallel gradient bucket size
  std::string pp_schedule = "1f1b";  // 1f1b | gpipe; the micro-batches are training.grad_accum_steps
  int64_t world_size() const { return dp * tp * pp * sp; }
};

struct CheckpointSection {
  std::string dir;              // absolute; default <out_dir>/checkpoints
  int64_t every = 500;          // steps between checkpoints; 0 = only at the end
  int64_t keep = 3;             // newest checkpoints kept; 0 = keep all
  std::string resume = "auto";  // "auto" (newest in dir, if any) | "none" | an absolute path
  bool on_preempt = true;       // SIGTERM/SIGUSR1 -> checkpoint and exit 75
};

struct LoggingSection {
  int64_t every = 10;  // steps between log lines
  bool jsonl = true;   // also write <out_dir>/metrics.jsonl
  bool tensorboard = true;       // event files in <out_dir>/tensorboard
  std::string progress = "auto";  // auto | always | never
  double peak_tflops = 0;        // per device; 0 = the table in trainer/metrics.cpp
};

struct RunConfig {
  RunSection run;
  TaskSection task;
  DistillSection distill;
  MedusaSection medusa;
  RouterSection router;
  LoraSection lora;
  QuantSection quant;
  ModelSection model;
  DataSection data;
  TokenizerSection tokenizer;
  OptimizerSection optimizer;
  ScheduleConfig schedule;  // peak_lr = optimizer.lr, total_steps = training.steps
  TrainingSection training;
  ParallelSection parallel;
  CheckpointSection checkpoint;
  GuardConfig guard;
  LoggingSection logging;

  std::string source;  // the YAML file it was loaded from (for messages; not a setting)

  // Tokens per optimizer step on one data-parallel replica (micro_batch * accum * seq_len).
  int64_t tokens_per_step_per_replica() const {
    return training.micro_batch_size * training.grad_accum_steps * data.seq_len;
  }
  // Tokens per optimizer step over every replica (the global batch).
  int64_t tokens_per_step() const { return tokens_per_step_per_replica() * parallel.dp; }
};

// Loads, overrides, validates. Throws anvil::Error (one message: where — what — how to fix).
RunConfig load_run_config(const std::string& yaml_path, const std::vector<std::string>& overrides = {});

// The same from YAML text; `source_name` names it in messages and relative input paths resolve
// against `base_dir` (load_run_config passes the file's directory).
RunConfig parse_run_config(const std::string& yaml_text, const std::string& source_name, const std::string& base_dir,
                           const std::vector<std::string>& overrides = {});

// The fully resolved config (every default filled in, absolute paths) as YAML; load_run_config of
// this text gives back the same settings. It stands alone: a model.config file is named in a comment
// and its architecture written out field by field, so a checkpoint's copy needs no config.json.
// Suitable for printing at start-up and for storing with checkpoints.
std::string to_yaml(const RunConfig& config);

// Settings that differ, one line each ("training.steps: 1000 -> 2000"); empty when identical.
// Provenance (`source`, `model.config_file`) is not a setting and is ignored.
std::vector<std::string> config_differences(const RunConfig& a, const RunConfig& b);
inline bool same_settings(const RunConfig& a, const RunConfig& b) { return config_differences(a, b).empty(); }

// Settles `model.vocab_size: auto` once the tokenizer is loaded. An explicit vocab_size smaller than
// the tokenizer's is an error (token ids would index past the embedding); a larger one is kept (padding).
void resolve_vocab_size(RunConfig& config, int64_t tokenizer_vocab);

// training.trainable (trainer/config_trainable.cpp): glob patterns (core/glob.h) over param names.
// True when any training.trainable pattern matches the param name.
bool matches_trainable(const RunConfig& config, const std::string& param_name);
// For the trainer once the model exists: throws if a trainable pattern matches no param (a typo would
// otherwise silently freeze the model), listing example param names.
void check_trainable_patterns(const RunConfig& config, const std::vector<std::string>& param_names);
// Marks every param trainable or frozen by the patterns and returns the trainable ones. The patterns
// are checked against the whole model: under pipeline parallelism (`pp` non-null, a collective over
// it) a stage holds only its own layers, so a pattern must match on some stage, and a stage whose
// params all stay frozen is allowed (it returns an empty list).
std::vector<Param*> select_trainable(const RunConfig& config, const std::vector<Param*>& params, Communicator* pp);

}  // namespace anvil
