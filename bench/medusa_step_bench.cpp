// What a Medusa-1 training step costs against its parts (issue 15: "a Medusa-1 step costs less
// than 1.2x a forward of the backbone plus the heads"). Trains CONFIG (a task.name: medusa,
// medusa.stage: 1 run) for `steps` steps and takes the median step time (the first two dropped),
// then times on the same batch shapes, interleaved and repeated: the backbone's forward alone,
// the heads' forward (logits and cross-entropy), and the heads' forward + backward without an
// input gradient (what a frozen trunk needs). Prints the medians and step / (forward + heads).
//   OMP_NUM_THREADS=2 build/bin/medusa_step_bench configs/medusa-1.yaml [steps=20] [repeats=10]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "data/loader.h"
#include "data/tokenizer.h"
#include "models/medusa_heads.h"
#include "trainer/load_model.h"
#include "trainer/medusa_task.h"
#include "trainer/trainer.h"

using namespace anvil;
using Clock = std::chrono::steady_clock;

namespace {
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}
double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s MEDUSA1_CONFIG [steps=20] [repeats=10]\n", argv[0]);
    return 2;
  }
  const int64_t steps = argc > 2 ? std::atoi(argv[2]) : 20;
  const int repeats = argc > 3 ? std::atoi(argv[3]) : 10;
  try {
    RunConfig config = load_run_config(argv[1], {"training.steps=" + std::to_string(steps), "schedule.warmup_steps=0", "training.eval_every=0",
                                                 "checkpoint.every=0", "checkpoint.resume=none",
                                                 "run.out_dir=/tmp/medusa_step_bench", "logging.jsonl=false",
                                                 "logging.tensorboard=false", "training.sample_every=0"});
    ANVIL_CHECK(config.task.name == "medusa" && config.medusa.stage == 1, argv[1],
                " is not a Medusa-1 run (task.name: medusa, medusa.stage: 1)");
    Trainer trainer(config, TrainerMode::Quiet);
    trainer.train();
    std::vector<double> step_ms;
    for (size_t i = 2; i < trainer.history().size(); ++i) step_ms.push_back(trainer.history()[i].ms);
    const RunConfig& rc = trainer.config();

    // The parts, on the run's batch shapes: the base and heads as the task builds them.
    LoadedModel base = load_model(rc.model.init_from);
    const ModelConfig& mc = base.model->config();
    MedusaHeads heads(rc.medusa.num_heads, rc.medusa.num_layers, mc.hidden_size, mc.vocab_size, nullptr);
    init_params(heads.params(), 1, 0.02f, 0.02f);
    for (Param* p : heads.params()) p->set_trainable(true);
    Loader loader(std::make_shared<const TokenStore>(TokenStore::open(rc.data.train)), loader_config(rc), Split::Train);
    std::vector<Batch> batches;
    for (int64_t m = 0; m < rc.training.grad_accum_steps; ++m) batches.push_back(loader.next());
    const CrossEntropyLoss ce = base.model->cross_entropy();
    std::vector<double> fwd_ms, heads_fwd_ms, heads_train_ms;
    for (int r = 0; r < repeats; ++r) {
      double f = 0, hf = 0, ht = 0;
      for (const Batch& b : batches) {
        Clock::time_point t0 = Clock::now();
        Tensor h;
        {
          Cache c;
          h = base.model->forward_hidden(b.ids, c);
        }
        f += ms_since(t0);
        std::vector<Tensor> targets;
        for (int64_t k = 0; k < heads.heads(); ++k) targets.push_back(medusa_head_targets(b, k, -100));
        t0 = Clock::now();
        for (int64_t k = 0; k < heads.heads(); ++k) {
          Cache c;
          ce.forward(heads.infer_head(k, h), targets[k], c, -100);
        }
        hf += ms_since(t0);
        t0 = Clock::now();
        for (int64_t k = 0; k < heads.heads(); ++k) {
          Cache c;
          const Tensor logits = heads.forward_head(k, h, c.child(0));
          ce.forward(logits, targets[k], c, -100);
          heads.backward_head(k, ce.backward(c), c.child(0), false);
        }
        ht += ms_since(t0);
      }
      fwd_ms.push_back(f), heads_fwd_ms.push_back(hf), heads_train_ms.push_back(ht);
    }
    const double step = median(step_ms), f = median(fwd_ms), hf = median(heads_fwd_ms), ht = median(heads_train_ms);
    std::printf("medusa-1 step (K=%ld, %ld x [%ld, %ld] tokens): %.1f ms (median of %zu steps)\n",
                long(rc.medusa.num_heads), long(rc.training.grad_accum_steps), long(rc.training.micro_batch_size),
                long(rc.data.seq_len), step, step_ms.size());
    std::printf("  backbone forward %.1f ms, heads forward %.1f ms, heads forward+backward %.1f ms (medians of %d)\n",
                f, hf, ht, repeats);
    std::printf("  step / (backbone forward + heads forward)          = %.3f\n", step / (f + hf));
    std::printf("  step / (backbone forward + heads forward+backward) = %.3f\n", step / (f + ht));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
