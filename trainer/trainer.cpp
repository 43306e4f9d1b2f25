#include "trainer/trainer.h"

#include <omp.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/cuda_device.h"
#include "eval/generate.h"
#include "eval/perplexity.h"
#include "kernels/elementwise.h"
#include "models/hf_convert.h"
#include "models/layout_checks.h"
#include "optim/adamw.h"
#include "optim/schedule.h"
#include "parallel/collectives.h"
#include "parallel/grad_groups.h"
#include "parallel/grad_norm.h"
#include "parallel/launch.h"
#include "parallel/nccl_communicator.h"
#include "parallel/sequence_partition.h"
#include "parallel/timed_communicator.h"
#include "trainer/checkpoint.h"
#include "trainer/exit_codes.h"
#include "trainer/preemption.h"
#include "trainer/task.h"
#include "trainer/optimizer_factory.h"

namespace anvil {

namespace fs = std::filesystem;

namespace {
using Clock = std::chrono::steady_clock;

void put_loader_state(CheckpointMeta& meta, const std::string& prefix, const LoaderState& s) {
  meta.counters[prefix + ".epoch"] = s.epoch;
  meta.counters[prefix + ".position"] = s.position;
  meta.counters[prefix + ".num_samples"] = s.num_samples;
  meta.counters[prefix + ".seq_len"] = s.seq_len;
  meta.counters[prefix + ".num_tokens"] = s.num_tokens;
  meta.counters[prefix + ".seed"] = static_cast<int64_t>(s.seed);
  meta.counters[prefix + ".shuffle"] = s.shuffle;
  meta.counters[prefix + ".split"] = s.split;
}

LoaderState get_loader_state(const CheckpointMeta& meta, const std::string& prefix, const std::string& dir) {
  auto get = [&](const char* key) {
    auto it = meta.counters.find(prefix + "." + key);
    ANVIL_CHECK(it != meta.counters.end(), "checkpoint ", dir, " has no data position (", prefix, ".", key,
                ") — it was not written by `anvil train`; start a fresh run (checkpoint.resume: none)");
    return it->second;
  };
  LoaderState s;
  s.epoch = get("epoch");
  s.position = get("position");
  s.num_samples = get("num_samples");
  s.seq_len = get("seq_len");
  s.num_tokens = get("num_tokens");
  s.seed = static_cast<uint64_t>(get("seed"));
  s.shuffle = get("shuffle");
  s.split = get("split");
  return s;
}

}  // namespace

void check_parallel_launch(const ParallelSection& p, int world_size) {
  const int64_t product = p.world_size();
  if (product != world_size) {
    const std::string degrees = "parallel: dp*tp*pp*sp = " + std::to_string(p.dp) + "*" + std::to_string(p.tp) + "*" +
                                std::to_string(p.pp) + "*" + std::to_string(p.sp) + " = " + std::to_string(product);
    ANVIL_CHECK(world_size != 1, degrees, " but this process runs alone (world size 1) — launch it with mpirun -np ",
                product, " (or srun -n ", product, "), or set the degrees to 1");
    ANVIL_FAIL(degrees, " but the job has ", world_size, " processes — launch with mpirun -np ", product,
               " (or srun -n ", product, "), or change the parallel section to multiply to ", world_size);
  }
}

Device training_device(const RunSection& run, Communicator* host) {
  if (run.device == "cpu") return Device::cpu();
  ANVIL_CHECK(cuda_device_count() > 0, "run.device: cuda, but ", cuda_unavailable_reason(),
              " — check the driver and CUDA_VISIBLE_DEVICES (nvidia-smi lists the GPUs this process may use), or "
              "set run.device: cpu");
  return Device::cuda(cuda_device_for_rank(host));  // node-local rank % visible GPUs, as NCCL's bootstrap
}

DType compute_dtype(const RunSection& run) { return run.precision == "bf16" ? DType::BF16 : DType::F32; }

LoaderConfig loader_config(const RunConfig& config) {
  LoaderConfig lc;
  lc.seq_len = config.data.seq_len;
  lc.batch_size = config.training.micro_batch_size;
  lc.seed = static_cast<uint64_t>(config.run.seed);
  lc.valid_fraction = config.data.valid_fraction;
  lc.shuffle = config.data.shuffle;
  lc.ignore_index = static_cast<int32_t>(config.training.ignore_index);
  lc.packing = packing_from_string(config.data.packing);
  make_task(config)->configure_loader(lc);
  return lc;
}

GridDims grid_dims(const ParallelSection& p) {
  return GridDims{int(p.dp), int(p.tp), int(p.pp), int(p.sp), int(p.ep)};
}

Trainer::Trainer(RunConfig config, TrainerMode mode, std::shared_ptr<Communicator> world)
    : config_(std::move(config)), mode_(mode), world_(std::move(world)) {
  // Every rank checks the same numbers before any collective, so a bad launch fails everywhere at once.
  check_parallel_launch(config_.parallel, world_ ? world_->size() : 1);
  validate_layout(grid_dims(config_.parallel), config_.model);
  device_ = training_device(config_.run, world_.get());  // a clear error when cuda is asked for and no GPU is visible
  if (device_.is_cuda()) cuda_set_device(device_.index);
  if (world_) {
    grid_ = build_process_grid();
    main_rank_ = world_->rank() == 0;
  }
  verbose_ = mode == TrainerMode::Train && main_rank_;
  if (config_.run.threads > 0) omp_set_num_threads(static_cast<int>(config_.run.threads));

  tokenizer_ = std::make_shared<const Tokenizer>(Tokenizer::load(config_.tokenizer.path));
  resolve_vocab_size(config_, tokenizer_->vocab_size());
  const bool has_data = config_.data.train != "none";
  ANVIL_CHECK(has_data, config_.source, ": data.train is none (no token store; "
              "`anvil convert` writes such configs) — training needs data: --set data.train=path/to/tokens.h5");
  if (has_data) {
    store_ = std::make_shared<const TokenStore>(TokenStore::open(config_.data.train));
    store_->check_tokenizer(tokenizer_->hash_hex());
    ANVIL_CHECK(store_->info().vocab_size <= config_.model.vocab_size, "data.train: store ", config_.data.train,
                " has vocab_size ", store_->info().vocab_size, " but the model's vocab_size is ",
                config_.model.vocab_size, " — set model.vocab_size: auto or at least ", store_->info().vocab_size);
  }

  task_ = make_task(config_);
  if (store_) task_->check_data(config_, *store_);
  LoaderConfig lc = loader_config(config_);
  if (grid_) {  // every dp rank takes its slice of the same global batch
    lc.rank = grid_->rank(Axis::DP);
    lc.world = grid_->size(Axis::DP);
  }
  if (has_data) {
    train_loader_ = std::make_unique<Loader>(store_, lc, Split::Train);
    if (config_.data.valid_fraction > 0) valid_loader_ = std::make_unique<Loader>(store_, lc, Split::Valid);
  }

  ModelLayout layout;
  layout.tp = split_axis(Axis::TP);
  layout.sp = split_axis(Axis::SP);
  if (split_axis(Axis::PP)) {
    layout.stage = grid_->rank(Axis::PP);
    layout.stages = grid_->size(Axis::PP);
  }
  // The dp x sp ranks share each global micro-batch: the task sums its loss-token counts over
  // them (and the loop its losses); gradients are reduced per group below.
  if (grid_ && grid_->data_sequence_comm().size() > 1) data_group_ = &grid_->data_sequence_comm();
  TaskEnv env;
  env.config = &config_;
  env.layout = layout;
  env.device = device_;
  env.compute = compute_dtype(config_.run);
  env.data_group = data_group_;
  env.pp = split_axis(Axis::PP);
  task_->build(env);
  model_ = &task_->model();
  // Patterns match over the whole model (combined over pp); a pipeline stage may train nothing.
  trainable_ = select_trainable(config_, task_->tunable_params(), split_axis(Axis::PP));
  // Built, initialised and loaded on the CPU in f32; now onto the run's device and precision
  // (a no-op for cpu/fp32), before the gradient buckets and the optimizer state are laid out.
  model_->to(device_, compute_dtype(config_.run));
  // Gradients are partial sums over dp and sp (each sp rank saw a slice of every sequence):
  // one DataParallel per gradient group reduces them over the group's ranks (dense params over
  // dp x sp, expert params over the ranks holding the same expert; parallel/grad_groups.h).
  // ZeRO shards the dense group's state over its ranks; the optimizer steps on those shards.
  grad_groups_ = grad_groups(trainable_, grid_.get());
  for (GradGroup& g : grad_groups_) {
    reducers_.emplace_back();
    if (!g.reduce) continue;  // this rank alone holds these gradients
    const bool dense = &g == &grad_groups_.front();
    ANVIL_CHECK(dense || config_.optimizer.zero == 0, "optimizer.zero: ", config_.optimizer.zero, " shards the ",
                g.name, " params' state too, which the distributed optimizer does not do yet — set optimizer.zero: 0");
    DataParallelConfig dc;
    dc.bucket_mb = config_.parallel.bucket_mb;
    dc.zero_stage = dense ? static_cast<int>(config_.optimizer.zero) : 0;
    dc.average = false;  // the loss is normalised by the global token count instead (see trainer.h)
    reducers_.back() = std::make_unique<DataParallel>(g.params, *g.reduce, dc);
  }
  dp_ = reducers_.front().get();
  model_->set_grad_ready_callback([this](const std::vector<Param*>& ready) {
    for (auto& r : reducers_)  // each takes its own params and ignores the others'
      if (r) r->grads_ready(ready);
  });
  // Every step runs through the pipeline executor; with one stage its table is plain
  // accumulation (forward, backward, forward, backward ...).
  pipeline_ = std::make_unique<PipelineExecutor>(task_->stage(), split_axis(Axis::PP),
                                                 parse_pipe_schedule(config_.parallel.pp_schedule));
  pipeline_->set_before_backward([this](int, bool last) {
    for (auto& r : reducers_)
      if (r) r->set_sync_enabled(last);
  });
  optimizer_ = make_optimizer(config_.optimizer, trainable_,
                              OptimizerLayout{dp_, split_axis(Axis::TP), split_axis(Axis::PP)});

  const std::string resolved = to_yaml(config_);
  if (main_rank_) {
    fs::create_directories(config_.run.out_dir);
    std::ofstream(fs::path(config_.run.out_dir) / "config.yaml") << resolved;
  }

  guard_ = NumericsGuard(config_.guard);  // before restore(): the checkpoint carries its state
  std::string resume_from;
  if (config_.checkpoint.resume == "auto") resume_from = latest_checkpoint(config_.checkpoint.dir);
  else if (config_.checkpoint.resume != "none") resume_from = config_.checkpoint.resume;
  if (!resume_from.empty()) restore(resume_from);

  metrics_ = std::make_unique<MetricsLogger>(config_, device_, main_rank_, verbose_, step_);
  if (world_ && world_->size() > 1 && config_.run.peer_timeout > 0)
    watchdog_ = std::make_unique<PeerWatchdog>(*world_, (fs::path(config_.run.out_dir) / ".ranks").string(),
                                               config_.run.peer_timeout, kExitPeerLost);

  if (verbose_) {
    int64_t n_params = 0, n_trainable = 0;
    for (Param* p : model_->params()) {
      n_params += p->value.numel();
      if (p->trainable) n_trainable += p->value.numel();
    }
    const MemoryTable mem = model_->memory_table(config_.training.micro_batch_size, config_.data.seq_len);
    std::printf("%s", resolved.c_str());
    std::printf("model: %s, %.2fM params (%.2fM trainable); data: %ld train / %ld valid sequences of %ld tokens\n",
                config_.model.model_type.c_str(), n_params / 1e6, n_trainable / 1e6,
                long(train_loader_->num_samples()), long(valid_loader_ ? valid_loader_->num_samples() : 0),
                long(config_.data.seq_len));
    const std::string groups = describe_optimizer_groups(*optimizer_);
    if (!groups.empty()) std::printf("optimizer %s, param groups:\n%s", optimizer_->name(), groups.c_str());
    std::printf("memory plan: params %.1f MB, grads %.1f MB, optimizer %.1f MB, activations %.1f MB per micro-batch; "
                "%d threads\n", mem.param_bytes / 1e6, mem.grad_bytes / 1e6, optimizer_->state_bytes() / 1e6,
                (mem.activation_bytes + mem.workspace_bytes) / 1e6, omp_get_max_threads());
    if (dp_)
      std::printf("data parallel: dp=%ld, ZeRO-%ld, %zu gradient buckets of <= %.1f MB; optimizer state above is per "
                  "rank; global batch %ld sequences\n", long(config_.parallel.dp), long(config_.optimizer.zero),
                  dp_->buckets().size(), config_.parallel.bucket_mb,
                  long(config_.training.micro_batch_size * config_.training.grad_accum_steps * config_.parallel.dp));
    std::printf("%s\n", metrics_->peak().describe().c_str());
    if (step_ > 0) std::printf("resumed from %s at step %ld\n", resume_from.c_str(), long(step_));
    std::fflush(stdout);
  }
}

Trainer::~Trainer() = default;

std::unique_ptr<ProcessGrid> Trainer::build_process_grid() {
  // cpu: the axes are split from the MPI world (host tensors). cuda: from a NCCL communicator over
  // the same ranks on this rank's GPU, so gradients, activations and optimizer exchanges move
  // device tensors with NCCL while host values (token counts, losses, norms) still go over MPI;
  // world_ stays MPI for checkpoints (MPI-IO), the memory report and the peer watchdog.
  std::shared_ptr<Communicator> collectives;
  if (device_.is_cuda() && world_->size() > 1) collectives = grid_collective_world(world_, "cuda", device_.index);
  return std::make_unique<ProcessGrid>(world_, grid_dims(config_.parallel), collectives);
}

Communicator* Trainer::split_axis(Axis axis) const {
  return grid_ && grid_->size(axis) > 1 ? &grid_->comm(axis) : nullptr;
}

CheckpointContents Trainer::checkpoint_contents(const std::vector<NamedTensor>& state) {
  CheckpointContents contents;
  std::map<std::string, const Param*> by_name;
  const Param* tied_copy = model_->tied_embedding_copy();  // the first stage writes the embedding
  // One copy of each element reaches the file (writes_first_copy). Pipeline stages hold disjoint
  // params (the last stage's tied-embedding copy is left to the first).
  auto writer = [&](const ShardSpec& spec) { return !grid_ || writes_first_copy(*grid_, spec); };
  for (Param* p : task_->checkpoint_params()) {
    // The f32 weights (the master under mixed precision); checkpoint.cpp copies device tensors to the host.
    contents.params.push_back({p->name, master_weight(*p), p->shard, p != tied_copy && writer(p->shard)});
    by_name[p->name] = p;
  }
  // Optimizer state is named "<param>.<what>". A tensor shaped like its param's shard is a
  // shard of the same split; anything else is held whole (full logical shape) by every rank.
  for (const NamedTensor& t : state) {
    const Param* owner = nullptr;
    for (size_t dot = t.name.rfind('.'); dot != std::string::npos && !owner; dot = t.name.rfind('.', dot - 1)) {
      const auto it = by_name.find(t.name.substr(0, dot));
      if (it != by_name.end()) owner = it->second;
      if (dot == 0) break;
    }
    const bool shard = owner && owner->shard.sharded() && t.tensor.shape() == owner->value.shape();
    const ShardSpec spec = shard ? owner->shard : ShardSpec{};
    contents.optimizer.push_back({t.name, t.tensor, spec, owner != tied_copy && writer(spec)});
  }
  return contents;
}

void Trainer::restore(const std::string& dir) {
  std::vector<NamedTensor> state = optimizer_->state();  // under ZeRO a collective: gathered views to read into
  CheckpointContents contents = checkpoint_contents(state);
  const CheckpointMeta meta = load_checkpoint(dir, contents, optimizer_->name());
  refresh_values(model_->params());  // the masters were loaded; the bf16 values follow (no-op in f32)
  step_ = meta.step;
  optimizer_->load_state(state);
  guard_.restore(meta.counters);
  auto it = meta.counters.find("optimizer.steps");
  optimizer_->set_step_count(it == meta.counters.end() ? meta.step : it->second);
  train_loader_->restore(get_loader_state(meta, "data.train", dir));
}

std::string Trainer::save() {
  CheckpointMeta meta;
  meta.step = step_;
  meta.run_config_yaml = to_yaml(config_);
  meta.model_config_json = config_.model.to_json().dump();
  meta.counters["optimizer.steps"] = optimizer_->step_count();
  for (const auto& [key, bytes] : optimizer_state_bytes_counters(*optimizer_)) meta.counters[key] = bytes;
  // Every random draw is Philox keyed by (seed, purpose, step): seed and step are the whole RNG state.
  meta.counters["rng.seed"] = config_.run.seed;
  put_loader_state(meta, "data.train", train_loader_->state());
  guard_.save(meta.counters);
  meta.optimizer_name = optimizer_->name();
  const std::vector<NamedTensor> state = optimizer_->state();  // under ZeRO: gathered over dp, collectively
  const std::string dir = save_checkpoint(config_.checkpoint.dir, meta, checkpoint_contents(state),
                                          config_.checkpoint.keep, world_.get());
  return main_rank_ ? dir : "";
}

void Trainer::report_memory() {
  size_t params = 0, grads = 0;
  for (const Param* p : model_->params()) {
    params += p->value.nbytes() + (p->master.defined() ? p->master.nbytes() : 0);
    if (p->grad.defined()) grads += p->grad.nbytes();
  }
  const MemoryStats mem = allocator_for(device_).stats();  // the last step's high-water mark on the training device
  const size_t activations = mem.peak_bytes > step_resident_bytes_ ? mem.peak_bytes - step_resident_bytes_ : 0;
  char line[320];
  std::string where = "rank 0";
  if (grid_)
    where = "rank " + std::to_string(world_->rank()) + " (dp " + std::to_string(grid_->rank(Axis::DP)) + ", tp " +
            std::to_string(grid_->rank(Axis::TP)) + ", pp " + std::to_string(grid_->rank(Axis::PP)) + ", sp " +
            std::to_string(grid_->rank(Axis::SP)) + ")";
  char host[64] = "";
  if (device_.is_cuda())
    std::snprintf(host, sizeof host, " on %s; host peak %.2f", device_.str().c_str(),
                  cpu_allocator().stats().peak_bytes / 1e6);
  std::snprintf(line, sizeof line,
                "  %s: params %.2f, grads %.2f, optimizer state %.2f, activations %.2f (step peak %.2f%s)",
                where.c_str(), params / 1e6, grads / 1e6, optimizer_->state_bytes() / 1e6, activations / 1e6,
                mem.peak_bytes / 1e6, host);
  // Gathered so the lines print together, in rank order, from the main rank.
  const std::vector<std::string> lines = world_ ? all_gather_strings(*world_, line) : std::vector<std::string>{line};
  if (!verbose_) return;
  std::string text = "peak memory per rank in the last step (MB):";
  for (const std::string& l : lines) text += "\n" + l;
  metrics_->print(text);
}

Batch Trainer::sliced(Batch batch) const {
  if (!grid_ || grid_->size(Axis::SP) == 1) return batch;
  const Communicator& sp = grid_->comm(Axis::SP);  // every sp rank read the same batch: keep my positions
  batch.ids = sequence_slice(batch.ids, sp);
  batch.targets = sequence_slice(batch.targets, sp);
  if (batch.position_ids.defined()) batch.position_ids = sequence_slice(batch.position_ids, sp);
  if (batch.segment_ids.defined()) batch.segment_ids = sequence_slice(batch.segment_ids, sp);
  return batch;
}

StepRecord Trainer::train_step() {
  const auto t0 = Clock::now();
  const CommClock* clock = world_ ? comm_clock(world_.get()) : nullptr;
  const double comm0 = clock ? clock->seconds : 0;
  // Peaks of the training device's allocator (the CUDA caching allocator on cuda) and the host's.
  Allocator& memory = allocator_for(device_);
  memory.reset_peak();
  if (device_.is_cuda()) cpu_allocator().reset_peak();
  step_resident_bytes_ = memory.stats().current_bytes;  // params, grads, optimizer state
  model_->zero_grad();
  const int64_t accum = config_.training.grad_accum_steps;
  // The step's micro-batches, read on the host; the task normalises each by the global
  // micro-batch's token count (trainer.h).
  std::vector<Batch> batches;
  for (int64_t m = 0; m < accum; ++m) batches.push_back(sliced(train_loader_->next()));
  task_->begin_step(step_);
  PipelineLoss& loss = task_->prepare(batches, true);
  double loss_sum = pipeline_->step(static_cast<int>(accum), loss).loss;  // every pp rank has it
  StepRecord r;
  for (auto& reducer : reducers_)
    if (reducer) reducer->finish_grad_sync();
  if (data_group_) loss_sum = all_reduce_sum(*data_group_, loss_sum);
  std::vector<const Param*> not_counted;  // the last stage's tied-embedding copy counts on the first stage
  if (const Param* copy = model_->tied_embedding_copy()) not_counted.push_back(copy);
  std::vector<GradNormGroup> norm_groups;
  for (size_t i = 0; i < grad_groups_.size(); ++i)
    norm_groups.push_back({&grad_groups_[i].params, reducers_[i].get(), grad_groups_[i].across});
  r.grad_norm = clip_grid_grad_norm(norm_groups, {split_axis(Axis::TP), split_axis(Axis::PP)}, not_counted,
                                    config_.optimizer.grad_clip);
  r.lr = learning_rate(config_.schedule, step_);
  r.loss = loss_sum;  // the mean over the step's micro-batches
  // On reduced values only, so every rank reaches the same verdict.
  const GuardDecision verdict = guard_.check(step_ + 1, r.loss, r.grad_norm);
  if (verdict.verdict == GuardVerdict::Stop) {
    stop_reason_ = StopReason::NumericsGuard;
    stop_message_ = "numerics guard stopped the run at step " + std::to_string(step_ + 1) + ": " + verdict.reason +
                    " — the step was not applied and the newest checkpoint is untouched; lower optimizer.lr or "
                    "raise optimizer.grad_clip, or let the guard skip such steps (guard.on_nonfinite / guard.on_spike: "
                    "skip)";
    return r;
  }
  r.skipped = verdict.verdict == GuardVerdict::Skip;
  r.guard_reason = verdict.reason;
  r.skipped_total = guard_.skipped_total();
  if (!r.skipped) optimizer_->step(r.lr);
  if (device_.is_cuda()) cuda_synchronize(device_.index);  // the step's queued kernels count in its time
  ++step_;
  r.step = step_;
  r.ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  r.tokens_per_s = static_cast<double>(config_.tokens_per_step()) / (r.ms / 1e3);  // the global batch
  r.peak_mb = memory.stats().peak_bytes / 1e6;
  r.comm_ms = clock ? (clock->seconds - comm0) * 1e3 : 0;
  r.task_metrics = task_->step_metrics();
  return r;
}

void Trainer::log(const StepRecord& r) { metrics_->step(r); }

void Trainer::train(int64_t stop_at_step) {
  const int64_t last = stop_at_step > 0 ? std::min(stop_at_step, config_.training.steps) : config_.training.steps;
  const TrainingSection& t = config_.training;
  const int64_t first_step = step_;
  stop_reason_ = StopReason::Finished;
  if (config_.checkpoint.on_preempt) install_preemption_handlers();
  bool preempted = false;
  while (step_ < last) {
    StepRecord r = train_step();
    if (stop_reason_ == StopReason::NumericsGuard) return;  // every rank saw the same reduced values
    // Any rank's signal stops every rank after this same step (a signal may reach one rank only).
    const StepSync sync = sync_step(world_.get(), preemption_signal() != 0, r.ms, r.comm_ms);
    r.rank_step_ms = sync.step_ms;
    r.rank_comm_ms = sync.comm_ms;
    history_.push_back(r);
    log(r);
    const bool final_step = step_ == config_.training.steps;
    if (valid_loader_ && t.eval_every > 0 && (step_ % t.eval_every == 0 || final_step)) {
      const double val = evaluate(t.eval_batches);
      last_val_loss_ = val;
      metrics_->validation(step_, val, eval_metrics_, task_->loss_is_cross_entropy());
    }
    // KV-cached decoding runs on one unsplit model; a split one is sampled after conversion.
    const bool can_sample = !grid_ || grid_->dims().product() == grid_->dims().dp;
    if (t.sample_every > 0 && (step_ % t.sample_every == 0 || final_step) && verbose_ && can_sample)
      metrics_->print("sample: " + sample(t.sample_prompt, t.sample_tokens));
    if (sync.stop && config_.checkpoint.on_preempt) {
      preempted = true;
      break;
    }
    if (config_.checkpoint.every > 0 && step_ % config_.checkpoint.every == 0 && step_ < last) save();
  }
  if (step_ == first_step && !preempted) return;  // nothing trained (already at the final step): keep the checkpoint
  report_memory();
  const std::string dir = save();
  if (preempted) {
    stop_reason_ = StopReason::Preempted;
    const int sig = preemption_signal();
    stop_message_ = std::string("preempted (") + (sig ? signal_name(sig) : "a signal on another rank") +
                    ") after step " + std::to_string(step_) + ": checkpoint " + dir +
                    " written; run the same command again to resume";
  }
  if (verbose_) metrics_->print("checkpoint: " + dir);
  std::fflush(stdout);
}

double Trainer::evaluate(int64_t batches) {
  ANVIL_CHECK(store_ != nullptr, "evaluation needs data: data.train is none — pass --set data.train=path/to/tokens.h5");
  ANVIL_CHECK(valid_loader_ != nullptr, "evaluation needs a validation split — set data.valid_fraction > 0");
  valid_loader_->reset();
  const int64_t n = evaluation_batches(*valid_loader_, batches);
  std::vector<Batch> valid;
  for (int64_t i = 0; i < n; ++i) valid.push_back(sliced(valid_loader_->next()));
  // Each batch's loss is the mean over this rank's dp replica (its sp group's tokens); weigh
  // it by this rank's token count so the sums over dp x sp give the global batch's mean.
  const PipelineStepResult result = pipeline_->evaluate(static_cast<int>(n), task_->prepare(valid, false));
  eval_metrics_ = task_->eval_metrics();
  std::vector<double> sums(n), counts = result.weights;
  for (int64_t i = 0; i < n; ++i) sums[i] = result.losses[i] * counts[i];
  if (data_group_) {
    sums = all_reduce_sum(*data_group_, sums);
    counts = all_reduce_sum(*data_group_, counts);
  }
  double total = 0;
  for (int64_t i = 0; i < n; ++i) total += counts[i] > 0 ? sums[i] / counts[i] : 0.0;
  return total / static_cast<double>(n);
}

std::string Trainer::sample(const std::string& prompt, int64_t tokens) {
  SamplingConfig s;
  s.temperature = config_.training.sample_temperature;
  s.top_k = config_.training.sample_top_k;
  s.top_p = config_.training.sample_top_p;
  s.seed = static_cast<uint64_t>(config_.run.seed) + static_cast<uint64_t>(step_);
  return complete_text(*model_, *tokenizer_, prompt, tokens, s, end_of_document_id(store_.get(), *tokenizer_));
}

bool Trainer::loss_is_cross_entropy() const { return task_->loss_is_cross_entropy(); }

double Trainer::unigram_entropy() const {
  ANVIL_CHECK(store_ != nullptr, "the unigram entropy needs data: data.train is none — pass --set "
              "data.train=path/to/tokens.h5");
  return anvil::unigram_entropy(*store_, train_loader_->documents());
}

}  // namespace anvil
