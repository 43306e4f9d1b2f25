// The training/validation loader over a TokenStore: packed windows of seq_len + 1
// tokens, a deterministic per-epoch shuffle, dp-rank slicing and exact resume.
//
// Split. Documents, not windows, are split, so no document is in both sets. The
// validation documents are a fixed random subset chosen from the seed
// (PhiloxStream(seed, stream_id("valid-split"))): round(valid_fraction * num_documents)
// of them, at least one when valid_fraction > 0. The same seed and fraction give
// the same split; a different seed gives a different one, so keep the seed fixed
// across runs whose validation losses you compare.
//
// Packing. A split's documents, in store order, form one token stream (each
// document already ends with EOS). Window i is stream[i*T, i*T + T + 1): ids are its
// first T tokens, targets the last T (shifted by one). A target whose loss_mask is 0
// becomes ignore_index. A final partial window is dropped. Windows cross document
// boundaries; what attention makes of that is the packing mode:
//   none       the window is one sequence (attention is not masked at EOS), as in
//              GPT-2/llm.c pretraining. Batch::segment_ids / position_ids stay undefined.
//   documents  the same windows, carrying their document boundaries: segment_ids[t] numbers
//              the documents of the window from 0 (a document begun in an earlier window is
//              document 0), and position_ids[t] restarts at 0 where a document begins and at
//              the window's start (Megatron's reset_position_ids / reset_attention_mask).
//              Attention then stays inside each document. Targets are those of `none`.
//
// Order. The loader walks an endless sample sequence: epoch 0's order, then epoch
// 1's, ... Each epoch is a permutation of all windows (Fisher–Yates driven by
// PhiloxStream(seed, stream_id("train-shuffle"), epoch)), or the identity when
// shuffle is off; validation is never shuffled. Every epoch visits every window
// exactly once; a global batch that reaches the end of an epoch continues into
// the next one (no samples dropped). Global batch k is samples [k*G, (k+1)*G) with
// G = world * batch_size, and rank r takes the slice [r*B, (r+1)*B) of it, so every
// dp layout with the same G sees the same global batches.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "data/token_store.h"

namespace anvil {

enum class Packing { None, Documents };
// "none" | "documents"; throws naming the value and the choices.
Packing packing_from_string(const std::string& name);
const char* packing_name(Packing p);

struct LoaderConfig {
  int64_t seq_len = 0;        // T
  int64_t batch_size = 0;     // B, per rank
  uint64_t seed = 0;
  double valid_fraction = 0;  // of documents, in [0, 1)
  bool shuffle = true;        // train only
  int32_t ignore_index = -100;
  int rank = 0;               // dp rank and world size
  int world = 1;
  Packing packing = Packing::None;
};

enum class Split { Train, Valid };

struct Batch {
  Tensor ids;      // [B, T] i32
  Tensor targets;  // [B, T] i32, ignore_index where the target is masked out
  // Packing::Documents only (undefined otherwise): the document of each token (i32 [B, T],
  // non-decreasing along a row) and each token's position in its document (i32 [B, T]).
  Tensor segment_ids;
  Tensor position_ids;
};

// Where the loader is: the next global batch starts at sample `position` of epoch
// `epoch`. The other fields identify the sample sequence, so restoring a state
// into a loader over different data or settings is refused.
struct LoaderState {
  int64_t epoch = 0;
  int64_t position = 0;
  int64_t num_samples = 0;
  int64_t seq_len = 0;
  int64_t num_tokens = 0;  // tokens in the split's stream
  uint64_t seed = 0;
  int64_t shuffle = 0;
  int64_t split = 0;  // 0 train, 1 valid
};

class Loader {
 public:
  Loader(std::shared_ptr<const TokenStore> store, const LoaderConfig& config, Split split);

  Batch next();
  LoaderState state() const;
  void restore(const LoaderState& state);  // throws when the state belongs to other data/settings
  void reset() { epoch_ = 0; position_ = 0; }

  int64_t num_samples() const { return num_samples_; }  // windows per epoch in this split
  int64_t epoch() const { return epoch_; }              // epoch of the next global batch's first sample
  int64_t position() const { return position_; }
  int64_t global_batch() const { return int64_t(config_.world) * config_.batch_size; }
  int64_t stream_tokens() const { return stream_tokens_; }
  const std::vector<int64_t>& documents() const { return docs_; }  // this split's documents, ascending
  const LoaderConfig& config() const { return config_; }
  Split split() const { return split_; }

  // Window index of sample `position` in `epoch` (the permutation; for tests and tools).
  int64_t window_at(int64_t epoch, int64_t position);
  // Fills one window: ids[T] and targets[T].
  void fill_window(int64_t window, int32_t* ids, int32_t* targets) const;
  // Fills one window's document ids and in-document positions (segments[T], positions[T]).
  void fill_documents(int64_t window, int32_t* segments, int32_t* positions) const;

 private:
  void build_stream();
  void ensure_permutation(int64_t epoch);

  std::shared_ptr<const TokenStore> store_;
  LoaderConfig config_;
  Split split_;
  std::vector<int64_t> docs_;
  // The stream as runs of consecutive store tokens: run j covers stream positions
  // [run_start_[j], run_start_[j+1]) and begins at store token run_store_[j].
  std::vector<int64_t> run_start_, run_store_;
  std::vector<int64_t> doc_stream_start_;  // where each non-empty document starts in the stream
  int64_t stream_tokens_ = 0;
  int64_t num_samples_ = 0;
  int64_t epoch_ = 0, position_ = 0;
  int64_t perm_epoch_ = -1;
  std::vector<int64_t> perm_;
};

// The split's documents (ascending) for `num_documents` documents; exposed for tests
// and tools that need the split without a loader.
std::vector<int64_t> split_documents(int64_t num_documents, double valid_fraction, uint64_t seed, Split split);

}  // namespace anvil
