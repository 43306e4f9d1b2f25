#include "models/medusa_heads.h"

#include <string>

#include "kernels/activation.h"
#include "kernels/elementwise.h"
#include "models/transformer.h"

namespace anvil {

MedusaHeads::MedusaHeads(int64_t heads, int64_t layers, int64_t hidden, int64_t vocab, Communicator* tp)
    : layers_(layers), hidden_(hidden), vocab_(vocab) {
  ANVIL_CHECK(heads >= 1, "medusa.num_heads must be at least 1, got ", heads);
  ANVIL_CHECK(layers >= 0, "medusa.num_layers must be >= 0 (ResBlocks per head), got ", layers);
  heads_.resize(static_cast<size_t>(heads));
  for (int64_t k = 0; k < heads; ++k) {
    Head& head = heads_[k];
    const std::string prefix = std::string(kPrefix) + "." + std::to_string(k) + ".";
    for (int64_t l = 0; l < layers; ++l) {
      auto block = std::make_unique<Linear>(prefix + std::to_string(l) + ".linear", hidden, hidden, true, Init::Zeros);
      block->bias().init = Init::SquareLinearBias;
      head.blocks.push_back(std::move(block));
    }
    head.out = std::make_unique<ColumnParallelLinear>(prefix + std::to_string(layers), hidden, vocab, false, tp);
    head.out->weight().role = ParamRole::Output;  // vocabulary rows, like an untied lm_head
  }
}

void MedusaHeads::check_head(int64_t k, const char* where) const {
  ANVIL_CHECK(k >= 0 && k < heads(), "MedusaHeads::", where, ": head ", k, " does not exist — the model has heads 0 .. ",
              heads() - 1);
}

Tensor MedusaHeads::forward_head(int64_t k, const Tensor& h, Cache& c) {
  check_head(k, "forward_head");
  Head& head = heads_[k];
  Tensor x = h;
  for (size_t l = 0; l < head.blocks.size(); ++l) {
    Cache& cl = c.child(l);
    Tensor pre = head.blocks[l]->forward(x, cl);  // saves x
    cl["pre"] = pre;
    Tensor y = empty_like(pre, pre.shape());
    kernels::residual_silu_forward(x, pre, y);
    x = std::move(y);
  }
  return head.out->forward(x, c.child(head.blocks.size()));
}

Tensor MedusaHeads::backward_head(int64_t k, const Tensor& dlogits, Cache& c, bool input_grad) {
  check_head(k, "backward_head");
  Head& head = heads_[k];
  const size_t L = head.blocks.size();
  if (L == 0 && !input_grad) {  // W2 alone: its weight gradient needs no dx
    head.out->param_grads(dlogits, c.child(0));
    c.clear();
    return Tensor();
  }
  Tensor dx = head.out->backward(dlogits, c.child(L));  // reduced over tp
  for (size_t l = L; l-- > 0;) {
    Cache& cl = c.child(l);
    Linear& block = *head.blocks[l];
    // y = x + silu(pre): dpre = dy * silu'(pre); dx = dy + W1^T dpre.
    Tensor dpre = empty_like(dx, dx.shape());
    kernels::silu_backward(dx, cl.get("pre"), dpre);
    if (l == 0 && !input_grad) {
      block.linear.accumulate_grads(dpre.contiguous().view({-1, hidden_}), cl.get("x"));
      cl.clear();
      dx = Tensor();
    } else {
      kernels::add_inplace(dx, block.backward(dpre, cl));  // clears cl
    }
  }
  c.clear();
  return dx;
}

Tensor MedusaHeads::infer_head(int64_t k, const Tensor& h) {
  check_head(k, "infer_head");
  Head& head = heads_[k];
  Tensor x = h;
  for (auto& block : head.blocks) {
    Tensor pre = block->infer(x);
    kernels::residual_silu_forward(x, pre, pre);  // written over pre (elementwise, same index)
    x = std::move(pre);
  }
  return head.out->infer(x);
}

Tensor MedusaHeads::forward(const Tensor& h, Cache& c) {
  ANVIL_CHECK(h.dim() == 3, "MedusaHeads::forward: h must be [batch, seq_len, hidden], got ", h.describe());
  std::vector<Tensor> logits;
  for (int64_t k = 0; k < heads(); ++k) logits.push_back(forward_head(k, h, c.child(k)));
  const int64_t B = h.size(0), T = h.size(1), V = logits[0].size(2), K = heads();
  Tensor out = empty_like(logits[0], {B, T, K, V});
  for (int64_t k = 0; k < K; ++k) out.select(2, k).copy_(logits[k]);
  return out;
}

Tensor MedusaHeads::backward(const Tensor& dy, Cache& c) {
  ANVIL_CHECK(dy.dim() == 4 && dy.size(2) == heads(), "MedusaHeads::backward: dy must be [batch, seq_len, ", heads(),
              ", vocab shard], got ", dy.describe());
  Tensor dh;
  for (int64_t k = 0; k < heads(); ++k) {
    Tensor d = backward_head(k, dy.select(2, k).contiguous(), c.child(k));
    if (dh.defined()) kernels::add_inplace(dh, d);
    else dh = d;
  }
  c.clear();
  return dh;
}

void MedusaHeads::collect_params(std::vector<Param*>& out) {
  for (Head& head : heads_) {
    for (auto& block : head.blocks) block->collect_params(out);
    head.out->collect_params(out);
  }
}

size_t MedusaHeads::activation_bytes(const ActivationDims& d) const {
  // Per ResBlock its input and pre-activation, then W2's input and the logits shard.
  const size_t vocab_local = static_cast<size_t>(heads_[0].out->linear().out_features());
  return d.tokens * (2 * static_cast<size_t>(layers_) * hidden_ + hidden_ + vocab_local) * d.act;
}

void MedusaHeads::copy_lm_head(TransformerLM& base) {
  const ModelConfig& mc = base.config();
  ANVIL_CHECK(mc.hidden_size == hidden_ && mc.vocab_size == vocab_, "MedusaHeads::copy_lm_head: the base has hidden ",
              mc.hidden_size, " and vocabulary ", mc.vocab_size, " but the heads were built for ", hidden_, " and ",
              vocab_);
  ANVIL_CHECK(base.is_last_stage(), "MedusaHeads::copy_lm_head: the base's LM head is on its last pipeline stage");
  const Param* w = &base.head_weight();
  for (Head& head : heads_) {
    Param& out = head.out->weight();
    ANVIL_CHECK(out.value.shape() == w->value.shape(), "MedusaHeads::copy_lm_head: ", w->name, " is ",
                w->value.describe(), " on this rank but ", out.name, " is ", out.value.describe(),
                " — build the heads with the base's tp split");
    master_weight(out).copy_(master_weight(*w));
    refresh_value(out);
  }
}

}  // namespace anvil
