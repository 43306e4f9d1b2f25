// MaskTokenEmbedding: token embedding plus ParallelSpec's mask table (see models/mask_embedding.h).
#include "models/mask_embedding.h"

#include "kernels/elementwise.h"
#include "kernels/embedding.h"
#include "parallel/tensor_parallel.h"

namespace anvil {

MaskTokenEmbedding::MaskTokenEmbedding(VocabParallelEmbedding& tokens, int64_t masks, int64_t dim, Communicator* tp)
    : weight(kMaskEmbeddingName, Tensor::zeros({masks, dim}), ParamRole::Embedding, Init::Normal),
      tokens_(tokens),
      tp_(tp) {
  ANVIL_CHECK(masks >= 1, "ParallelSpec: the drafter needs at least one mask token, got ", masks,
              " — set distill.parallel_tokens >= 1");
}

Tensor MaskTokenEmbedding::infer(const Tensor& ids_in) {
  check_dtype(ids_in, DType::I32, "embedding ids");
  const Tensor ids = ids_in.contiguous();
  const int64_t V = tokens_.num_embeddings(), k = masks(), dim = weight.value.size(1);
  const Tensor host_ids = ids.to(Device::cpu());  // the range check reads the ids on the host
  const int32_t* p = host_ids.data<int32_t>();
  for (int64_t i = 0; i < ids.numel(); ++i)
    ANVIL_CHECK(p[i] >= 0 && p[i] < V + k, "ParallelSpec drafter: id ", p[i], " at position ", i,
                " is neither a token of the vocabulary [0, ", V, ") nor one of its ", k, " mask tokens [", V, ", ",
                V + k, ")");
  Shape out_shape = ids.shape();
  out_shape.push_back(dim);
  // Real ids: the token table's rows (a shard's ids give zeros elsewhere, as in wte); mask ids
  // lie past every shard, so they get zeros there and their mask row here.
  Tensor y = empty_like(tokens_.weight.value, {ids.numel(), dim});
  kernels::embedding_shard_forward(ids, tokens_.weight.value, tokens_.vocab_start(), y);
  if (tp_) ReduceFromTensorParallelRegion::forward(tp_, y);
  Tensor rows = empty_like(weight.value, {ids.numel(), dim});
  kernels::embedding_shard_forward(ids, weight.value, V, rows);
  kernels::add_inplace(y, rows);
  return y.view(out_shape);
}

Tensor MaskTokenEmbedding::forward(const Tensor& ids, Cache& c) {
  Tensor y = infer(ids);
  c["ids"] = ids.contiguous();
  return y;
}

Tensor MaskTokenEmbedding::backward(const Tensor& dy_in, Cache& c) {
  const Tensor& dy = ReduceFromTensorParallelRegion::backward(tp_, dy_in);
  const Tensor dy2 = dy.contiguous().view({-1, weight.value.size(1)});
  const Tensor& ids = c.get("ids");
  if (tokens_.weight.trainable)
    kernels::embedding_shard_backward(ids, dy2, tokens_.vocab_start(), tokens_.weight.grad);
  if (weight.trainable) kernels::embedding_shard_backward(ids, dy2, tokens_.num_embeddings(), weight.grad);
  c.clear();
  return Tensor();
}

}  // namespace anvil
