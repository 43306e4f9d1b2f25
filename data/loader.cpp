#include "data/loader.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "core/rng.h"

namespace anvil {

namespace {
// Uniform integer in [0, range) from one Philox block: 64 random bits scaled by
// multiply-shift (bias below range / 2^64, far under anything measurable).
inline int64_t draw_below(const PhiloxStream& rng, uint64_t index, int64_t range) {
  const PhiloxBlock b = rng.block(index);
  const uint64_t bits = static_cast<uint64_t>(b[0]) | (static_cast<uint64_t>(b[1]) << 32);
  return static_cast<int64_t>((static_cast<unsigned __int128>(bits) * static_cast<uint64_t>(range)) >> 64);
}

int64_t valid_count(int64_t num_documents, double valid_fraction) {
  if (valid_fraction <= 0) return 0;
  return std::max<int64_t>(1, std::llround(valid_fraction * static_cast<double>(num_documents)));
}

const char* split_name(Split s) { return s == Split::Train ? "train" : "valid"; }
}  // namespace

Packing packing_from_string(const std::string& name) {
  if (name == "none") return Packing::None;
  if (name == "documents") return Packing::Documents;
  ANVIL_FAIL("data.packing: '", name, "' is not a packing mode — use none (windows attend across documents, "
             "the default) or documents (attention stays inside each document)");
}

const char* packing_name(Packing p) { return p == Packing::Documents ? "documents" : "none"; }

std::vector<int64_t> split_documents(int64_t num_documents, double valid_fraction, uint64_t seed, Split split) {
  ANVIL_CHECK(std::isfinite(valid_fraction) && valid_fraction >= 0 && valid_fraction < 1, "valid_fraction ",
              valid_fraction, " is not in [0, 1) — set it to e.g. 0.01, or 0 for no validation split");
  const int64_t n_valid = valid_count(num_documents, valid_fraction);
  ANVIL_CHECK(n_valid < num_documents, "valid_fraction ", valid_fraction, " of ", num_documents,
              " documents puts ", n_valid, " in validation and leaves none for training — lower valid_fraction "
              "or prepare more documents");
  // Partial Fisher–Yates: the first n_valid entries of a seeded permutation.
  std::vector<int64_t> order(num_documents);
  std::iota(order.begin(), order.end(), 0);
  const PhiloxStream rng(seed, stream_id("valid-split"));
  for (int64_t i = 0; i < n_valid; ++i) {
    std::swap(order[i], order[i + draw_below(rng, i, num_documents - i)]);
  }
  std::vector<char> is_valid(num_documents, 0);
  for (int64_t i = 0; i < n_valid; ++i) is_valid[order[i]] = 1;
  std::vector<int64_t> docs;
  docs.reserve(split == Split::Valid ? n_valid : num_documents - n_valid);
  for (int64_t d = 0; d < num_documents; ++d) {
    if (is_valid[d] == (split == Split::Valid ? 1 : 0)) docs.push_back(d);
  }
  return docs;
}

Loader::Loader(std::shared_ptr<const TokenStore> store, const LoaderConfig& config, Split split)
    : store_(std::move(store)), config_(config), split_(split) {
  ANVIL_CHECK(store_ != nullptr, "Loader: no token store given — open one with TokenStore::open(path)");
  const std::string& path = store_->path();
  ANVIL_CHECK(config.seq_len >= 1, "loader for '", path, "': seq_len ", config.seq_len,
              " must be at least 1 — set data.seq_len");
  ANVIL_CHECK(config.batch_size >= 1, "loader for '", path, "': batch_size ", config.batch_size,
              " must be at least 1 — set the per-rank micro-batch size");
  ANVIL_CHECK(config.world >= 1 && config.rank >= 0 && config.rank < config.world, "loader for '", path,
              "': rank ", config.rank, " is not in [0, world = ", config.world,
              ") — pass the data-parallel rank and size");
  ANVIL_CHECK(config.ignore_index < 0 || config.ignore_index >= store_->info().vocab_size, "loader for '", path,
              "': ignore_index ", config.ignore_index, " is a real token id (vocab_size ",
              store_->info().vocab_size, ") — use a negative value such as -100");
  ANVIL_CHECK(split == Split::Train || config.valid_fraction > 0, "loader for '", path,
              "': a validation loader needs valid_fraction > 0 — set data.valid_fraction, e.g. 0.01");
  ANVIL_CHECK(store_->num_documents() > 0, "loader for '", path,
              "': the store has no documents — re-run `anvil data prepare` on non-empty inputs");
  try {
    docs_ = split_documents(store_->num_documents(), config.valid_fraction, config.seed, split);
  } catch (const Error& e) {
    ANVIL_FAIL("loader for '", path, "': ", e.what());
  }
  build_stream();
  num_samples_ = stream_tokens_ >= 1 ? (stream_tokens_ - 1) / config.seq_len : 0;
  ANVIL_CHECK(num_samples_ > 0, "loader for '", path, "': the ", split_name(split), " split has ", stream_tokens_,
              " tokens in ", docs_.size(), " documents, fewer than seq_len + 1 = ", config.seq_len + 1,
              " for one window — lower seq_len, change valid_fraction or prepare more data");
}

void Loader::build_stream() {
  const std::vector<int64_t>& off = store_->doc_offsets();
  run_start_.clear();
  run_store_.clear();
  doc_stream_start_.clear();
  int64_t pos = 0, run_end = -1;  // store index where the current run ends
  for (int64_t d : docs_) {
    const int64_t begin = off[d], end = off[d + 1];
    if (end == begin) continue;
    doc_stream_start_.push_back(pos);
    if (begin != run_end) {
      run_start_.push_back(pos);
      run_store_.push_back(begin);
    }
    pos += end - begin;
    run_end = end;
  }
  run_start_.push_back(pos);  // sentinel: the stream's end
  stream_tokens_ = pos;
}

void Loader::ensure_permutation(int64_t epoch) {
  if (perm_epoch_ == epoch) return;
  perm_.resize(num_samples_);
  std::iota(perm_.begin(), perm_.end(), 0);
  const PhiloxStream rng(config_.seed, stream_id("train-shuffle"), static_cast<uint32_t>(epoch));
  for (int64_t i = num_samples_ - 1; i > 0; --i) {
    std::swap(perm_[i], perm_[draw_below(rng, static_cast<uint64_t>(i), i + 1)]);
  }
  perm_epoch_ = epoch;
}

int64_t Loader::window_at(int64_t epoch, int64_t position) {
  ANVIL_CHECK(epoch >= 0 && position >= 0 && position < num_samples_, "loader: sample ", position, " of epoch ",
              epoch, " is outside [0, ", num_samples_, ")");
  if (!config_.shuffle || split_ == Split::Valid) return position;
  ensure_permutation(epoch);
  return perm_[position];
}

void Loader::fill_window(int64_t window, int32_t* ids, int32_t* targets) const {
  ANVIL_CHECK(window >= 0 && window < num_samples_, "loader: window ", window, " is outside [0, ", num_samples_,
              ")");
  const int64_t T = config_.seq_len;
  const int64_t start = window * T;
  const uint8_t* mask = store_->loss_mask();
  const int32_t ignore = config_.ignore_index;
  size_t j = std::upper_bound(run_start_.begin(), run_start_.end(), start) - run_start_.begin() - 1;
  for (int64_t k = 0; k <= T; ++j) {
    const int64_t pos = start + k;
    const int64_t n = std::min(run_start_[j + 1] - pos, T + 1 - k);
    int64_t q = run_store_[j] + (pos - run_start_[j]);
    for (int64_t i = 0; i < n; ++i, ++k, ++q) {
      const int32_t tok = store_->token(q);
      if (k < T) ids[k] = tok;
      if (k > 0) targets[k - 1] = (mask && mask[q] == 0) ? ignore : tok;
    }
  }
}

void Loader::fill_documents(int64_t window, int32_t* segments, int32_t* positions) const {
  ANVIL_CHECK(window >= 0 && window < num_samples_, "loader: window ", window, " is outside [0, ", num_samples_,
              ")");
  const int64_t T = config_.seq_len, start = window * T;
  // The document holding the window's first token, then each later start inside the window.
  size_t d = std::upper_bound(doc_stream_start_.begin(), doc_stream_start_.end(), start) - doc_stream_start_.begin() - 1;
  int32_t segment = 0;
  int64_t begin = start;  // where the current document's positions count from
  for (int64_t k = 0; k < T; ++k) {
    const int64_t pos = start + k;
    if (d + 1 < doc_stream_start_.size() && doc_stream_start_[d + 1] == pos) {
      ++d;
      if (k > 0) ++segment;
      begin = pos;
    }
    segments[k] = segment;
    positions[k] = static_cast<int32_t>(pos - begin);
  }
}

Batch Loader::next() {
  const int64_t B = config_.batch_size, T = config_.seq_len;
  Batch batch{Tensor::empty({B, T}, DType::I32), Tensor::empty({B, T}, DType::I32)};
  int32_t* ids = batch.ids.data<int32_t>();
  int32_t* targets = batch.targets.data<int32_t>();
  const int64_t first = position_ + int64_t(config_.rank) * B;  // this rank's slice of the global batch
  for (int64_t i = 0; i < B; ++i) {
    const int64_t g = first + i;
    const int64_t w = window_at(epoch_ + g / num_samples_, g % num_samples_);
    fill_window(w, ids + i * T, targets + i * T);
  }
  if (config_.packing == Packing::Documents) {
    batch.segment_ids = Tensor::empty({B, T}, DType::I32);
    batch.position_ids = Tensor::empty({B, T}, DType::I32);
    for (int64_t i = 0; i < B; ++i) {
      const int64_t g = first + i;
      fill_documents(window_at(epoch_ + g / num_samples_, g % num_samples_),
                     batch.segment_ids.data<int32_t>() + i * T, batch.position_ids.data<int32_t>() + i * T);
    }
  }
  const int64_t end = position_ + global_batch();
  epoch_ += end / num_samples_;
  position_ = end % num_samples_;
  return batch;
}

LoaderState Loader::state() const {
  LoaderState s;
  s.epoch = epoch_;
  s.position = position_;
  s.num_samples = num_samples_;
  s.seq_len = config_.seq_len;
  s.num_tokens = stream_tokens_;
  s.seed = config_.seed;
  s.shuffle = (config_.shuffle && split_ == Split::Train) ? 1 : 0;
  s.split = split_ == Split::Train ? 0 : 1;
  return s;
}

void Loader::restore(const LoaderState& s) {
  const LoaderState me = state();
  std::string diff;
  const auto field = [&](const char* name, auto saved, auto mine) {
    if (saved != mine) {
      diff += (diff.empty() ? "" : ", ") + std::string(name) + " " + std::to_string(saved) + " (saved) vs " +
              std::to_string(mine) + " (now)";
    }
  };
  field("split", s.split, me.split);
  field("seq_len", s.seq_len, me.seq_len);
  field("num_samples", s.num_samples, me.num_samples);
  field("split tokens", s.num_tokens, me.num_tokens);
  field("seed", s.seed, me.seed);
  field("shuffle", s.shuffle, me.shuffle);
  ANVIL_CHECK(diff.empty(), "loader for '", store_->path(), "': the saved data position belongs to other data or "
              "settings: ", diff, " — resume with the dataset, seq_len, seed, valid_fraction and shuffle the "
              "checkpoint was made with, or reset the data position");
  ANVIL_CHECK(s.epoch >= 0 && s.position >= 0 && s.position < num_samples_, "loader for '", store_->path(),
              "': saved position epoch ", s.epoch, ", sample ", s.position, " is outside [0, ", num_samples_,
              ") — the checkpoint's data state is damaged; reset the data position");
  epoch_ = s.epoch;
  position_ = s.position;
}

}  // namespace anvil
