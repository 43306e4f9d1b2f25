#include "models/lora_merge.h"

#include <algorithm>
#include <cmath>

#include "kernels/elementwise.h"

namespace anvil {

using kernels::QuantizedWeight;
using kernels::QuantScheme;

namespace {

void check_cpu_base(const QuantizedWeight& base, const char* op, const std::string& what) {
  kernels::check_quantized_weight(base, std::string(op) + ": " + what);
  ANVIL_CHECK(base.packed.device().is_cpu(), op, ": ", what, ": the base weight is on ", base.packed.device().str(),
              " — merging runs on the CPU; load the weight there (an export step does)");
}

// A CPU f32 contiguous copy (or view) of t.
Tensor cpu_f32(const Tensor& t) {
  Tensor c = t.device().is_cpu() ? t : t.to(Device::cpu());
  if (c.dtype() != DType::F32) c = c.to(DType::F32);
  return c.contiguous();
}

Tensor dequantize(const QuantizedWeight& w) {
  Tensor out = Tensor::empty({w.out_features, w.in_features});
  kernels::dequantize_rows(w, 0, w.out_features, out);
  return out;
}

}  // namespace

QuantizedWeight merge_qa_lora(const QuantizedWeight& base, const LoraAdapter& adapter, const std::string& what) {
  constexpr const char* op = "merge_qa_lora";
  check_cpu_base(base, op, what);
  ANVIL_CHECK(base.scheme != QuantScheme::NF4, op, ": ", what,
              ": an NF4 base has no zero points to fold an adapter into: QLoRA adapters merge exactly only into a "
              "dense model — use `anvil convert --merge` to a dense (f32/bf16) model, or requantize with the naive "
              "merge and accept its error");
  const int64_t g = adapter.spec().qa_group, out = base.out_features, in = base.in_features;
  ANVIL_CHECK(g > 0, op, ": ", what,
              ": the adapter is plain LoRA (lora.qa_group 0), whose ΔW is not constant within a quantization group, "
              "so it cannot fold into the zero points — train a QA-LoRA adapter (lora.qa_group = the base's group "
              "size ", base.block, "), or requantize with the naive merge and accept its error");
  ANVIL_CHECK(g == base.block, op, ": ", what, ": the adapter pools groups of ", g, " inputs (lora.qa_group) but the ",
              quant_scheme_name(base.scheme), " base is quantized in groups of ", base.block,
              " — the merge is exact only when the groups align; train with lora.qa_group ", base.block);
  const Tensor& a = adapter.A.value;
  const Tensor& b = adapter.B.value;
  ANVIL_CHECK(b.size(0) == out && a.size(1) * g == in, op, ": ", what, ": the adapter (lora_A ",
              shape_str(a.shape()), ", lora_B ", shape_str(b.shape()), ", qa_group ", g, ") is for a weight [",
              b.size(0), ", ", a.size(1) * g, "] but the base is [", out, ", ", in,
              "] — attach the adapter of this module, built for this weight's shape");
  ANVIL_CHECK(!adapter.A.shard.sharded() && !adapter.B.shard.sharded(), op, ": ", what,
              ": the adapter is split over tensor parallelism — merge whole weights (gather the shards first)");

  // ΔW as the adapter defines it (one place: delta_weight), constant within each group, so the
  // group's first column stands for it. z' is computed in double and rounded once to f32.
  const Tensor delta = cpu_f32(adapter.delta_weight());
  const Tensor scales = base.scales.contiguous(), zeros = base.zeros.contiguous();
  const int64_t groups = in / g;
  QuantizedWeight merged = base;  // shares packed and scales
  merged.zeros = Tensor::empty({out, groups}, DType::F32);
  const float* pd = delta.data<float>();
  const float* ps = scales.data<float>();
  const float* pz = zeros.data<float>();
  float* pm = merged.zeros.data<float>();
  for (int64_t o = 0; o < out; ++o) {
    for (int64_t k = 0; k < groups; ++k) {
      const int64_t j = o * groups + k;
      const double z = static_cast<double>(pz[j]) - static_cast<double>(pd[o * in + k * g]) / ps[j];
      pm[j] = static_cast<float>(z);
      ANVIL_CHECK(std::isfinite(pm[j]), op, ": ", what, ": the merged zero point of row ", o, ", group ", k, " is ",
                  pm[j], " (zero ", pz[j], ", scale ", ps[j], ", ΔW ", pd[o * in + k * g],
                  ") — the adapter's update or the base's scale is not usable; check the adapter for non-finite "
                  "values");
    }
  }
  return merged;
}

QuantizedWeight requantize_merged(const QuantizedWeight& base, const Tensor& delta, const std::string& what) {
  constexpr const char* op = "requantize_merged";
  check_cpu_base(base, op, what);
  ANVIL_CHECK(delta.defined() && delta.shape() == Shape({base.out_features, base.in_features}), op, ": ", what,
              ": the update is ", delta.defined() ? delta.describe() : std::string("undefined"), " but the base is [",
              base.out_features, ", ", base.in_features, "] — pass the adapter's delta_weight() for this module");
  Tensor w = dequantize(base);
  kernels::add_inplace(w, cpu_f32(delta));
  if (base.scheme == QuantScheme::NF4) return kernels::quantize_nf4(w, base.double_quant(), base.block, what);
  return kernels::quantize_groupwise(w, base.scheme, base.block, what);
}

MergeError merge_output_error(const QuantizedWeight& merged, const QuantizedWeight& base, const LoraAdapter& adapter,
                              const Tensor& x) {
  constexpr const char* op = "merge_output_error";
  ANVIL_CHECK(merged.out_features == base.out_features && merged.in_features == base.in_features, op,
              ": the merged weight is [", merged.out_features, ", ", merged.in_features, "] but the base is [",
              base.out_features, ", ", base.in_features, "] — compare a weight with the one it was merged from");
  ANVIL_CHECK(x.dim() == 2 && x.size(1) == base.in_features, op, ": x is ", x.describe(), " but the weight takes [rows, ",
              base.in_features, "]");
  const int64_t rows = x.size(0), out = base.out_features;
  Tensor y_merged = Tensor::empty({rows, out}), y_adapter = Tensor::empty({rows, out});
  kernels::quant_matmul(x, merged, y_merged);
  kernels::quant_matmul(x, base, y_adapter);
  adapter.add_forward(x, y_adapter, DropoutKey{});  // inactive: no dropout, as in evaluation
  const float* pm = y_merged.data<float>();
  const float* pa = y_adapter.data<float>();
  MergeError e;
  double scale = 0.0;
  for (int64_t i = 0; i < rows * out; ++i) {
    e.max_abs = std::max(e.max_abs, std::fabs(static_cast<double>(pm[i]) - pa[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(pa[i])));
  }
  e.max_rel = scale > 0.0 ? e.max_abs / scale : (e.max_abs > 0.0 ? HUGE_VAL : 0.0);
  return e;
}

}  // namespace anvil
