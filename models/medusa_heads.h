// MedusaHeads: K extra decoding heads on a base model's last hidden state (Medusa, Cai et al.
// 2024; ALGORITHMS.md §6). Head k (0-based) reads the hidden state h_t after the base's final
// norm — what its LM head reads — and predicts token t + k + 2 (the base's head predicts t + 1):
//   h' = h + SiLU(W1 h + b1)     a ResBlock, repeated `layers` times (each with its own weights;
//                                 Medusa's `[ResBlock] * n` shares one, a bug we do not copy)
//   logits_k = W2_k h'            [vocab, hidden], no bias
// W1 starts at zero (the block is the identity plus SiLU(b1)), b1 at PyTorch's nn.Linear default
// U(±1/sqrt(hidden)), W2 from init_weights' normal draw or, with copy_lm_head, the base's LM head
// (Medusa v0.1 and the axolotl fork start there).
//
// Parameter names are Medusa's own, so `medusa_lm_head.safetensors` loads both ways:
//   medusa_head.<k>.<l>.linear.weight [hidden, hidden], medusa_head.<k>.<l>.linear.bias [hidden],
//   medusa_head.<k>.<layers>.weight   [vocab, hidden]
// Under tensor parallelism W2 is column-parallel over the vocabulary exactly like lm_head (this
// rank's logits are its vocabulary shard, scored by the vocab-parallel cross-entropy); the
// ResBlocks are replicated: their input h is replicated over tp and the gradient reaching them
// is all-reduced by W2's backward, so their gradients agree on every tp rank (as the norms').
//
// Training runs one head at a time (forward_head, then backward_head before the next head's
// forward) so only one head's logits [B, T, vocab / tp] are alive at once.
#pragma once
#include <memory>
#include <vector>

#include "models/layers.h"
#include "models/tensor_parallel_layers.h"

namespace anvil {

class TransformerLM;

class MedusaHeads : public Module {
 public:
  static constexpr const char* kPrefix = "medusa_head";
  // heads >= 1, layers >= 0 (0: logits = W2 h). vocab is the full vocabulary; tp splits it.
  MedusaHeads(int64_t heads, int64_t layers, int64_t hidden, int64_t vocab, Communicator* tp);
  MedusaHeads(const MedusaHeads&) = delete;
  MedusaHeads& operator=(const MedusaHeads&) = delete;

  int64_t heads() const { return static_cast<int64_t>(heads_.size()); }
  int64_t layers() const { return layers_; }
  int64_t hidden() const { return hidden_; }
  int64_t vocab() const { return vocab_; }

  // Head k's logits [B, T, vocab / tp] from h [B, T, hidden] (the base's final hidden state);
  // saves what backward_head needs in c.
  Tensor forward_head(int64_t k, const Tensor& h, Cache& c);
  // dlogits of forward_head(k) -> accumulates head k's gradients and returns the gradient of h
  // (all-reduced over tp), or an undefined tensor without `input_grad` (a frozen trunk needs
  // none: Medusa-1 skips W1's transposed products). Clears c.
  Tensor backward_head(int64_t k, const Tensor& dlogits, Cache& c, bool input_grad = true);
  // forward_head without saving anything (decoding).
  Tensor infer_head(int64_t k, const Tensor& h);

  // Module: every head on h, stacked: logits [B, T, heads, vocab / tp]; backward takes the
  // gradient of that and returns dh. (Training uses the per-head calls above.)
  Tensor forward(const Tensor& h, Cache& c) override;
  Tensor backward(const Tensor& dy, Cache& c) override;
  void collect_params(std::vector<Param*>& out) override;
  size_t activation_bytes(const ActivationDims& d) const override;  // one head's, the peak of per-head training

  // W2 of every head := the base's LM head weight (this rank's vocabulary shard; a tied head's is
  // the embedding). The base must have the same hidden size, vocabulary and tp split, and hold its
  // head (the last pipeline stage).
  void copy_lm_head(TransformerLM& base);

 private:
  struct Head {
    std::vector<std::unique_ptr<Linear>> blocks;  // W1, b1 per ResBlock
    std::unique_ptr<ColumnParallelLinear> out;     // W2
  };
  void check_head(int64_t k, const char* where) const;
  int64_t layers_, hidden_, vocab_;
  std::vector<Head> heads_;
};

}  // namespace anvil
