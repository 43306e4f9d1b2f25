// The tiny random target and drafters of the speculative-decoding tests (chain and tree): a
// 2-layer spec_llama target, a 1-layer model that agrees with it rarely, a perturbed copy that
// agrees partly and an exact copy that agrees always.
#pragma once
#include <omp.h>

#include <memory>

#include "models/transformer.h"
#include "tests/support/reference.h"
#include "tests/support/small_models.h"

namespace anvil::testing {

inline std::unique_ptr<TransformerLM> random_model(const ModelConfig& c) {
  auto m = std::make_unique<TransformerLM>(c);
  m->init_weights(7);
  randomize_params(m->params());  // the same weights for the same config (streams named after params)
  return m;
}

// The target's weights plus uniform noise in [-scale, scale): a drafter that agrees partly.
inline std::unique_ptr<TransformerLM> perturbed_copy(TransformerLM& target, float scale) {
  auto m = std::make_unique<TransformerLM>(target.config());
  m->init_weights(7);
  const auto src = target.params(), dst = m->params();
  for (size_t i = 0; i < dst.size(); ++i) {
    dst[i]->value.copy_(src[i]->value);
    if (scale == 0) continue;
    const Tensor noise = random_tensor(dst[i]->value.shape(), 900 + static_cast<uint32_t>(i), -scale, scale);
    for (int64_t j = 0; j < noise.numel(); ++j) dst[i]->value.data<float>()[j] += noise.data<float>()[j];
  }
  return m;
}

struct Models {
  std::unique_ptr<TransformerLM> target = random_model(spec_llama(2));
  std::unique_ptr<TransformerLM> small = random_model(spec_llama(1));  // another architecture: agrees rarely
  std::unique_ptr<TransformerLM> near = perturbed_copy(*target, 0.03f);  // agrees partly
  std::unique_ptr<TransformerLM> same = perturbed_copy(*target, 0.0f);   // agrees always
};

inline Models& models() {
  // Rows at different lengths attend one row at a time (models/attention.cpp), each call far too
  // small for these tiny models to share between threads: one thread keeps the tests fast on a
  // busy machine.
  omp_set_num_threads(1);
  static Models m;
  return m;
}

}  // namespace anvil::testing
