#include "models/linear_weight.h"

#include "kernels/elementwise.h"
#include "kernels/matmul.h"

namespace anvil {

namespace {
Param no_param() { return Param("", Tensor(), ParamRole::Vector); }

// The split of a quantized tensor's dim 1 from the dense weight's split of `in`: every run scaled by
// num/den (packed bytes: bits/8; groups: 1/block), which must stay whole.
ShardSplit scaled_in_split(const ShardSplit& split, int64_t num, int64_t den, const std::string& module,
                           const char* unit) {
  auto scale = [&](int64_t n) {
    ANVIL_CHECK((n * num) % den == 0, module, ": the tensor-parallel split of in_features (a run of ", split.runs.front().length,
                " inputs at ", split.runs.front().global_start, ") cuts a quantization ", unit, " of ", den / num,
                " inputs — pick a tp degree whose share of in_features is a multiple of quant.block, or a smaller block");
    return n * num / den;
  };
  ShardSplit out = split;
  out.full_size = scale(out.full_size);
  for (ShardRun& run : out.runs) {
    run.local_start = scale(run.local_start);
    run.global_start = scale(run.global_start);
    run.length = scale(run.length);
  }
  return out;
}

// This rank's shard of a full 2-D quantized tensor [out, cols] under the dense weight's split, with
// dim 1 scaled by num/den: a frozen param that keeps its dtype.
Param quantized_param(const std::string& name, const Tensor& full, const ShardSpec& weight_shard, int64_t num,
                      int64_t den, const std::string& module, const char* unit) {
  ShardSpec spec;
  Shape local = full.shape();
  for (const ShardSplit& split : weight_shard.splits) {
    ShardSplit s = split.dim == 1 ? scaled_in_split(split, num, den, module, unit) : split;
    int64_t extent = 0;
    for (const ShardRun& run : s.runs) extent += run.length;
    local[s.dim] = extent;
    spec.add(std::move(s));
  }
  Tensor value = Tensor::empty(local, full.dtype());
  take_shard(spec, full, value);
  Param p(name, value, ParamRole::Vector, Init::Keep);
  p.keep_dtype = true;
  p.set_trainable(false);
  p.shard = spec;
  return p;
}

// A replicated frozen param holding `value` as it is.
Param replicated_param(const std::string& name, const Tensor& value) {
  Param p(name, value.clone(), ParamRole::Vector, Init::Keep);
  p.keep_dtype = true;
  p.set_trainable(false);
  return p;
}
}  // namespace

struct LinearWeight::Quantized {
  kernels::QuantScheme scheme = kernels::QuantScheme::NF4;
  int64_t block = 0;
  Param absmax = no_param(), absmax_codes = no_param(), absmax_scales = no_param(), absmax_offset = no_param();
  Param scales = no_param(), zeros = no_param(), perm = no_param();
  float offset = 0.0f;          // absmax_offset's value, on the host for the kernels
  ShardSpec dense_shard;        // the dense weight's split, which an adapter follows
  mutable Tensor absmax_local;  // a split double-quantized weight's decoded absmaxes (on the packed codes' device)
};

LinearWeight::~LinearWeight() = default;

LinearWeight::LinearWeight(const std::string& name, int64_t out, int64_t in, bool bias, Init init)
    : weight_(name + ".weight", Tensor::zeros({out, in}), ParamRole::Matrix, init),
      bias_(bias ? Param(name + ".bias", Tensor::zeros({out}), ParamRole::Vector, Init::Zeros) : no_param()) {}

LinearWeight::LinearWeight(Param& tied) : weight_(no_param()), bias_(no_param()), tied_(&tied) {}

Tensor LinearWeight::input_matrix(const Tensor& x) const {
  const int64_t in = in_features();
  ANVIL_CHECK(x.dim() >= 1 && x.size(-1) == in, weight().name, ": input ", x.describe(), " has last dim ",
              x.dim() ? x.size(-1) : 0, ", expected ", in, " (under tensor parallelism: this rank's shard)");
  return x.contiguous().view({-1, in});
}

Tensor LinearWeight::forward(const Tensor& x2, bool with_bias, const DropoutKey& key) const {
  const Param& w = weight();
  Tensor y = empty_like(x2, {x2.size(0), out_features()});
  if (quant_) {
    const Tensor& perm = quantized_perm();
    Tensor xp = x2;
    if (perm.defined()) {  // act order: the codes' columns are x's in perm's order
      xp = empty_like(x2, x2.shape());
      kernels::permute_columns(x2, perm, xp);
    }
    kernels::quant_matmul(xp, quantized_weight(), y);
    if (with_bias) add_bias(y);
  } else if (with_bias && has_bias()) {
    kernels::matmul_bias(x2, false, w.value, true, bias_.value, y);
  } else {
    kernels::matmul(x2, false, w.value, true, y);
  }
  if (lora_) lora_->add_forward(x2, y, key);
  return y;
}

void LinearWeight::add_bias(Tensor& y) const {
  if (has_bias()) kernels::add_bias(y, bias_.value);
}

Tensor LinearWeight::input_grad(const Tensor& dy2, const DropoutKey& key) const {
  Tensor dx = empty_like(dy2, {dy2.size(0), in_features()});
  if (!quant_) {
    kernels::matmul(dy2, false, weight().value, false, dx);
  } else if (!quantized_perm().defined()) {
    kernels::quant_matmul_input_grad(dy2, quantized_weight(), dx);
  } else {  // the gradient of the permuted input, scattered back to x's columns
    Tensor dp = empty_like(dy2, dx.shape());
    kernels::quant_matmul_input_grad(dy2, quantized_weight(), dp);
    dx = zeros_like(dy2, dx.shape());
    kernels::unpermute_add_columns(dp, quantized_perm(), dx);
  }
  if (lora_) lora_->add_input_grad(dy2, dx, key);
  return dx;
}

void LinearWeight::accumulate_grads(const Tensor& dy2, const Tensor& x2, const DropoutKey& key, Communicator* tp) {
  Param& w = weight();
  if (w.trainable && !quant_) kernels::matmul(dy2, true, x2, false, w.grad, 1.0f, 1.0f);
  if (has_bias() && bias_.trainable) kernels::bias_grad(dy2, bias_.grad);
  if (lora_) lora_->accumulate_grads(dy2, x2, key, tp);
}

LoraAdapter& LinearWeight::attach_lora(const LoraSpec& spec) {
  ANVIL_CHECK(!tied_, "a tied weight (", weight().name, ") takes no LoRA adapter — adapt the module that owns it");
  ANVIL_CHECK(!lora_, module_name(), " has a LoRA adapter already");
  lora_ = std::make_unique<LoraAdapter>(module_name(), out_features(), in_features(),
                                        quant_ ? quant_->dense_shard : weight_.shard, spec);
  return *lora_;
}

std::string LinearWeight::module_name() const {
  const std::string& name = weight().name;
  const std::string suffix = ".weight";
  const bool has_suffix = name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  return has_suffix ? name.substr(0, name.size() - suffix.size()) : name;
}

Tensor LinearWeight::merged() const {
  const Param& w = weight();
  Tensor m;
  if (quant_) {
    const kernels::QuantizedWeight q = quantized_weight();
    Tensor decoded = Tensor::empty({q.out_features, q.in_features}, DType::F32, q.packed.device());
    kernels::dequantize_rows(q, 0, q.out_features, decoded);
    m = decoded;
    if (quantized_perm().defined()) {  // back to x's column order
      m = zeros_like(decoded, decoded.shape());
      kernels::unpermute_add_columns(decoded, quantized_perm(), m);
    }
  } else {
    ANVIL_CHECK(w.dense_float(), w.name, ": holds ", w.value.describe(), ", which has no dense form");
    if (!lora_) return master_weight(w);
    m = master_weight(w).clone();
  }
  if (lora_) kernels::add_inplace(m, lora_->delta_weight().to(m.device()));
  return m;
}

void LinearWeight::set_quantized(const kernels::QuantizedWeight& full, const Tensor& perm) {
  using kernels::QuantScheme;
  const std::string module = module_name();
  ANVIL_CHECK(!tied_, "a tied weight (", weight().name, ") cannot be quantized — quantize the module that owns it, or "
              "add it to quant.skip");
  ANVIL_CHECK(!quant_, module, " is quantized already");
  ANVIL_CHECK(!lora_, module, ": quantize the base before attaching its LoRA adapter");
  kernels::check_quantized_weight(full, module);
  const Shape logical = logical_shape(weight_);
  ANVIL_CHECK(full.out_features == logical[0] && full.in_features == logical[1], module, ": the quantized weight is [",
              full.out_features, ", ", full.in_features, "] but the layer is [", logical[0], ", ", logical[1],
              "] — a quantized checkpoint for another model");
  const ShardSpec shard = weight_.shard;
  const ShardSplit* in_split = nullptr;
  for (const ShardSplit& split : shard.splits)
    if (split.dim == 1) in_split = &split;
  auto q = std::make_unique<Quantized>();
  q->scheme = full.scheme;
  q->block = full.block;
  q->dense_shard = shard;
  const std::string base = weight_.name;
  const int64_t out = full.out_features, in = full.in_features, bits = kernels::quant_bits(full.scheme);
  const Tensor packed = full.packed.to(Device::cpu()).contiguous().view({out, in * bits / 8});
  Param codes = quantized_param(base, packed, shard, bits, 8, module, "byte");
  auto grouped = [&](const char* suffix, const Tensor& t) {
    return quantized_param(base + "." + suffix, t.to(Device::cpu()).contiguous().view({out, in / full.block}), shard, 1,
                           full.block, module, "group");
  };
  if (full.scheme == QuantScheme::NF4) {
    if (!full.double_quant()) {
      q->absmax = grouped("absmax", full.absmax);
    } else {
      q->absmax_codes = replicated_param(base + ".absmax_codes", full.absmax_codes.to(Device::cpu()));
      q->absmax_scales = replicated_param(base + ".absmax_scales", full.absmax_scales.to(Device::cpu()));
      q->absmax_offset = replicated_param(base + ".absmax_offset", Tensor::full({1}, full.absmax_offset, DType::F32));
      q->offset = full.absmax_offset;
      if (shard.sharded())  // this shard's blocks, decoded (kernels read local blocks in local order)
        q->absmax_local = grouped("absmax", kernels::nf4_absmax(full)).value;
    }
  } else {
    q->scales = grouped("scales", full.scales);
    q->zeros = grouped("zeros", full.zeros);
  }
  if (perm.defined()) {
    ANVIL_CHECK(!in_split, module, ": an act-order (desc_act) weight reads its inputs in a permuted order, which a "
                "tensor-parallel split of in_features cannot take — use parallel.tp: 1, or a checkpoint quantized "
                "without desc_act");
    ANVIL_CHECK(perm.dtype() == DType::I32 && perm.dim() == 1 && perm.numel() == in, module, ": perm ",
                perm.describe(), " is not i32 [", in, "]");
    q->perm = replicated_param(base + ".perm", perm.to(Device::cpu()));
  }
  quant_out_ = codes.value.size(0);
  quant_in_ = codes.value.size(1) * 8 / bits;
  weight_ = std::move(codes);
  quant_ = std::move(q);
}

kernels::QuantizedWeight LinearWeight::quantized_weight() const {
  ANVIL_CHECK(quant_, module_name(), " is not quantized");
  const Quantized& q = *quant_;
  kernels::QuantizedWeight w;
  w.scheme = q.scheme;
  w.out_features = quant_out_;
  w.in_features = quant_in_;
  w.block = q.block;
  w.packed = weight_.value.view({-1});
  if (q.absmax.value.defined()) {
    w.absmax = q.absmax.value.view({-1});
  } else if (q.absmax_local.defined()) {  // a split double-quantized weight
    if (q.absmax_local.device() != weight_.value.device()) q.absmax_local = q.absmax_local.to(weight_.value.device());
    w.absmax = q.absmax_local.view({-1});
  } else if (q.absmax_codes.value.defined()) {
    w.absmax_codes = q.absmax_codes.value;
    w.absmax_scales = q.absmax_scales.value;
    // The offset param's current value when on the host (a checkpoint load writes it), else the one set.
    w.absmax_offset = q.absmax_offset.value.device().is_cpu() ? q.absmax_offset.value.data<float>()[0] : q.offset;
  }
  if (q.scales.value.defined()) {
    w.scales = q.scales.value;
    w.zeros = q.zeros.value;
  }
  return w;
}

const Tensor& LinearWeight::quantized_perm() const {
  ANVIL_CHECK(quant_, module_name(), " is not quantized");
  return quant_->perm.value;
}

void LinearWeight::collect_params(std::vector<Param*>& out) {
  if (!tied_) out.push_back(&weight_);
  if (has_bias()) out.push_back(&bias_);
  if (quant_) {
    for (Param* p : {&quant_->absmax, &quant_->absmax_codes, &quant_->absmax_scales, &quant_->absmax_offset,
                     &quant_->scales, &quant_->zeros, &quant_->perm})
      if (p->value.defined()) out.push_back(p);
  }
  if (lora_) {
    out.push_back(&lora_->A);
    out.push_back(&lora_->B);
  }
}

}  // namespace anvil
