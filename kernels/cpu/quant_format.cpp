// The quantized weight formats of kernels/quant.h on the CPU: the NF4 and dynamic-map tables,
// the shape checks, quantization (NF4 with optional double quantization, group-wise int4/int2)
// and the reference decode `dequantize_rows` that every fast path is tested against.
//
// Nearest-code choice, every table: code = the number of f32 midpoints (t[k] + t[k+1]) / 2 that
// lie strictly below x, i.e. the nearest value with a tie going to the LOWER code. That is
// bitsandbytes' NF4 decision tree (its thresholds are these midpoints) and its pure-torch
// backends (torch.bucketize on the midpoints) for both NF4 and the 8-bit dynamic map. (Its CUDA
// 8-bit binary search sends a tie to the even index instead and its CPU library uses a
// 65536-bin approximation; ties are measure-zero in real weights.) x = w · (1 / absmax) with an
// f32 reciprocal, as every bitsandbytes backend computes it; an all-zero block (absmax 0) codes
// every element as the table's exact 0.
#include "kernels/quant.h"

#include <algorithm>
#include <array>
#include <cmath>

#include "kernels/backend.h"
#include "kernels/cpu/common.h"

namespace anvil::kernels {
namespace {

// ALGORITHMS.md §9 (bitsandbytes get_4bit_type('nf4')).
constexpr float kNF4[16] = {-1.0f,
                            -0.6961928009986877f,
                            -0.5250730514526367f,
                            -0.39491748809814453f,
                            -0.28444138169288635f,
                            -0.18477343022823334f,
                            -0.09105003625154495f,
                            0.0f,
                            0.07958029955625534f,
                            0.16093020141124725f,
                            0.24611230194568634f,
                            0.33791524171829224f,
                            0.44070982933044434f,
                            0.5626170039176941f,
                            0.7229568362236023f,
                            1.0f};


// bitsandbytes create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): for exponent
// i = 0..6, the 2^i midpoints of linspace(0.1, 1, 2^i + 1) scaled by ±10^(i−6), plus 0 and 1,
// sorted (254 + 2 = 256 values, so no zero padding is needed). As the reference, boundaries,
// midpoints and products are f32; the boundaries are the exactly rounded linspace points
// (torch's f32 linspace kernel differs from them by an ulp at a few points depending on its
// SIMD width, so no construction matches every torch build bitwise).
std::array<float, 256> build_dynamic_map() {
  std::array<float, 256> map{};
  int n = 0;
  for (int i = 0; i < 7; ++i) {
    const int points = (1 << i) + 1;
    const float scale = static_cast<float>(std::pow(10.0, i - 6));
    for (int k = 0; k + 1 < points; ++k) {
      const float lo = static_cast<float>(0.1 + 0.9 * k / (points - 1));
      const float hi = static_cast<float>(0.1 + 0.9 * (k + 1) / (points - 1));
      const float mean = (lo + hi) / 2.0f;
      map[n++] = scale * mean;
      map[n++] = -(scale * mean);
    }
  }
  map[n++] = 0.0f;
  map[n++] = 1.0f;
  std::sort(map.begin(), map.end());
  return map;
}

const std::array<float, 256>& dynamic_map() {
  static const std::array<float, 256> map = build_dynamic_map();
  return map;
}

// The count-1 f32 midpoints of a sorted table.
template <size_t N>
std::array<float, N - 1> midpoints(const float* table) {
  std::array<float, N - 1> mids{};
  for (size_t k = 0; k + 1 < N; ++k) mids[k] = (table[k] + table[k + 1]) / 2.0f;
  return mids;
}

// Index of the nearest table value to x: the number of midpoints strictly below x.
template <size_t M>
uint8_t nearest_code(const std::array<float, M>& mids, float x) {
  return static_cast<uint8_t>(std::lower_bound(mids.begin(), mids.end(), x) - mids.begin());
}

// bitsandbytes' guard against a zero absmax: 1 / max(absmax, 1e-38) keeps 0 · inv = 0.
inline float safe_reciprocal(float absmax) { return 1.0f / std::max(absmax, 1e-38f); }

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The f32 CPU matrix W [out, in] a quantizer reads, contiguous and finite.
Tensor dense_weight(const Tensor& w, int64_t block, const char* op, const std::string& what) {
  cpu::require_cpu_dtype(op, what.c_str(), w, DType::F32);
  ANVIL_CHECK(w.dim() == 2 && w.size(0) > 0 && w.size(1) > 0, op, ": ", what, " is ", w.describe(),
              " but must be a non-empty weight [out_features, in_features]");
  ANVIL_CHECK(block > 0 && block % 8 == 0 && w.size(1) % block == 0, op, ": ", what, " has in_features ",
              w.size(1), " which the block/group size ", block,
              " cannot take — use a block that is a multiple of 8 and divides in_features");
  Tensor c = w.contiguous();
  const float* p = c.data<float>();
  for (int64_t i = 0; i < c.numel(); ++i) {
    ANVIL_CHECK(std::isfinite(p[i]), op, ": ", what, " holds a non-finite value (", p[i], ") at row ",
                i / c.size(1), ", column ", i % c.size(1), " — quantize a finite weight");
  }
  return c;
}

// Writes codes (each < 2^bits) of consecutive elements starting at element `first` (a multiple
// of 8 / bits) into packed bytes, the first element in the most significant bits.
void pack_codes(const uint8_t* codes, int64_t count, int bits, int64_t first, uint8_t* packed) {
  const int per_byte = 8 / bits;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t e = first + i;
    const int shift = 8 - bits * static_cast<int>(e % per_byte + 1);
    uint8_t& byte = packed[e / per_byte];
    if (e % per_byte == 0) byte = 0;
    byte = static_cast<uint8_t>(byte | (codes[i] << shift));
  }
}

inline uint8_t unpack_code(const uint8_t* packed, int bits, int64_t e) {
  const int per_byte = 8 / bits;
  const int shift = 8 - bits * static_cast<int>(e % per_byte + 1);
  return static_cast<uint8_t>((packed[e / per_byte] >> shift) & ((1 << bits) - 1));
}

void check_tensor(const Tensor& t, const char* field, DType dtype, const Shape& shape, Device device,
                  const std::string& what, const char* scheme) {
  ANVIL_CHECK(t.defined(), what, ": the ", scheme, " weight has no ", field, " tensor — it needs ", dtype_name(dtype),
              shape_str(shape));
  ANVIL_CHECK(t.dtype() == dtype, what, ": ", field, " is ", t.describe(), " but the ", scheme, " format stores it as ",
              dtype_name(dtype), " — convert it or re-quantize the weight");
  ANVIL_CHECK(t.shape() == shape, what, ": ", field, " has shape ", shape_str(t.shape()), " but the ", scheme,
              " format needs ", shape_str(shape),
              " for its shape and block — the checkpoint does not match the model's weight shape or block size");
  ANVIL_CHECK(t.is_contiguous(), what, ": ", field, " is a strided view (", t.describe(), ") — pass a contiguous tensor");
  ANVIL_CHECK(t.device() == device, what, ": ", field, " is on ", t.device().str(), " but packed is on ", device.str(),
              " — keep every tensor of the weight on one device");
}

void check_absent(const Tensor& t, const char* field, const std::string& what, const char* why) {
  ANVIL_CHECK(!t.defined(), what, ": the weight has a ", field, " tensor, which ", why,
              " — leave it undefined");
}

}  // namespace

int quant_bits(QuantScheme scheme) { return scheme == QuantScheme::Int2 ? 2 : 4; }

const char* quant_scheme_name(QuantScheme scheme) {
  switch (scheme) {
    case QuantScheme::NF4: return "nf4";
    case QuantScheme::Int4: return "int4";
    case QuantScheme::Int2: return "int2";
  }
  return "?";
}

QuantScheme parse_quant_scheme(const std::string& name, const std::string& field) {
  for (QuantScheme s : {QuantScheme::NF4, QuantScheme::Int4, QuantScheme::Int2}) {
    if (name == quant_scheme_name(s)) return s;
  }
  ANVIL_FAIL(field, ": unknown quantization scheme '", name, "' — choose nf4, int4 or int2");
}

const float* nf4_values() { return kNF4; }
const float* dynamic_map_signed() { return dynamic_map().data(); }

int64_t QuantizedWeight::bytes() const {
  int64_t total = 0;
  for (const Tensor* t : {&packed, &absmax, &absmax_codes, &absmax_scales, &scales, &zeros}) {
    if (t->defined()) total += static_cast<int64_t>(t->nbytes());
  }
  if (double_quant()) total += static_cast<int64_t>(sizeof absmax_offset);
  return total;
}

void check_quantized_weight(const QuantizedWeight& w, const std::string& what) {
  const char* scheme = quant_scheme_name(w.scheme);
  ANVIL_CHECK(w.out_features > 0 && w.in_features > 0, what, ": the ", scheme, " weight has shape [",
              w.out_features, ", ", w.in_features, "] — both sizes must be positive");
  ANVIL_CHECK(w.block > 0 && w.block % 8 == 0 && w.in_features % w.block == 0, what, ": block ", w.block,
              " does not fit in_features ", w.in_features,
              " — the block must be a positive multiple of 8 that divides in_features");
  ANVIL_CHECK(w.packed.defined(), what, ": the ", scheme, " weight has no packed codes tensor");
  const Device device = w.packed.device();
  const int64_t n = w.numel(), groups = n / w.block;
  check_tensor(w.packed, "packed", DType::U8, {n * quant_bits(w.scheme) / 8}, device, what, scheme);
  if (w.scheme == QuantScheme::NF4) {
    check_absent(w.scales, "scales", what, "only int4/int2 weights use");
    check_absent(w.zeros, "zeros", what, "only int4/int2 weights use");
    if (w.double_quant()) {
      check_absent(w.absmax, "absmax", what, "a double-quantized nf4 weight replaces by absmax_codes");
      check_tensor(w.absmax_codes, "absmax_codes", DType::U8, {groups}, device, what, scheme);
      check_tensor(w.absmax_scales, "absmax_scales", DType::F32, {ceil_div(groups, kDoubleQuantBlock)}, device,
                   what, scheme);
      ANVIL_CHECK(std::isfinite(w.absmax_offset), what, ": absmax_offset is ", w.absmax_offset,
                  " — a double-quantized weight needs the finite mean of its absmaxes");
    } else {
      check_absent(w.absmax_scales, "absmax_scales", what, "only double quantization (absmax_codes) uses");
      check_tensor(w.absmax, "absmax", DType::F32, {groups}, device, what, scheme);
    }
  } else {
    check_absent(w.absmax, "absmax", what, "only nf4 weights use");
    check_absent(w.absmax_codes, "absmax_codes", what, "only nf4 weights use");
    check_absent(w.absmax_scales, "absmax_scales", what, "only nf4 weights use");
    const Shape per_group{w.out_features, w.in_features / w.block};
    check_tensor(w.scales, "scales", DType::F32, per_group, device, what, scheme);
    check_tensor(w.zeros, "zeros", DType::F32, per_group, device, what, scheme);
  }
}

QuantizedWeight quantize_nf4(const Tensor& w, bool double_quant, int64_t block, const std::string& what) {
  const Tensor c = dense_weight(w, block, "quantize_nf4", what);
  QuantizedWeight q;
  q.scheme = QuantScheme::NF4;
  q.out_features = c.size(0);
  q.in_features = c.size(1);
  q.block = block;
  const int64_t n = q.numel(), blocks = n / block;
  q.packed = Tensor::empty({n / 2}, DType::U8);
  Tensor absmax = Tensor::empty({blocks}, DType::F32);
  const float* pw = c.data<float>();
  float* pa = absmax.data<float>();
  uint8_t* pp = q.packed.data<uint8_t>();
  static const auto mids = midpoints<16>(kNF4);
#pragma omp parallel for schedule(static) if (n >= cpu::kParallelMin)
  for (int64_t b = 0; b < blocks; ++b) {
    const float* x = pw + b * block;
    float amax = 0.0f;
    for (int64_t i = 0; i < block; ++i) amax = std::max(amax, std::fabs(x[i]));
    pa[b] = amax;
    const float inv = safe_reciprocal(amax);
    std::vector<uint8_t> codes(static_cast<size_t>(block));
    for (int64_t i = 0; i < block; ++i) codes[i] = nearest_code(mids, x[i] * inv);
    pack_codes(codes.data(), block, 4, b * block, pp);
  }
  if (!double_quant) {
    q.absmax = absmax;
    return q;
  }
  // Double quantization: centre the absmaxes on their mean (summed in double, then the nearest
  // f32; bitsandbytes' torch mean sums in f32, an ulp-level difference in a value that is stored),
  // then code each 256-block of them with the dynamic map against its own absmax.
  double sum = 0.0;
  for (int64_t b = 0; b < blocks; ++b) sum += pa[b];
  q.absmax_offset = static_cast<float>(sum / static_cast<double>(blocks));
  const int64_t chunks = ceil_div(blocks, kDoubleQuantBlock);
  q.absmax_codes = Tensor::empty({blocks}, DType::U8);
  q.absmax_scales = Tensor::empty({chunks}, DType::F32);
  uint8_t* pc = q.absmax_codes.data<uint8_t>();
  float* ps = q.absmax_scales.data<float>();
  static const auto dyn_mids = midpoints<256>(dynamic_map().data());
  for (int64_t k = 0; k < chunks; ++k) {
    const int64_t b0 = k * kDoubleQuantBlock, b1 = std::min(blocks, b0 + kDoubleQuantBlock);
    float scale = 0.0f;
    for (int64_t b = b0; b < b1; ++b) scale = std::max(scale, std::fabs(pa[b] - q.absmax_offset));
    ps[k] = scale;
    const float inv = safe_reciprocal(scale);
    for (int64_t b = b0; b < b1; ++b) {
      const float x = std::clamp((pa[b] - q.absmax_offset) * inv, -1.0f, 1.0f);
      pc[b] = nearest_code(dyn_mids, x);
    }
  }
  return q;
}

QuantizedWeight quantize_groupwise(const Tensor& w, QuantScheme scheme, int64_t group, const std::string& what) {
  ANVIL_CHECK(scheme == QuantScheme::Int4 || scheme == QuantScheme::Int2, "quantize_groupwise: ", what,
              " asks for scheme ", quant_scheme_name(scheme), " — group-wise quantization is int4 or int2 (nf4: ",
              "quantize_nf4)");
  const Tensor c = dense_weight(w, group, "quantize_groupwise", what);
  QuantizedWeight q;
  q.scheme = scheme;
  q.out_features = c.size(0);
  q.in_features = c.size(1);
  q.block = group;
  const int bits = quant_bits(scheme);
  const float qmax = static_cast<float>((1 << bits) - 1);
  const int64_t out = q.out_features, in = q.in_features, groups = in / group;
  q.packed = Tensor::empty({q.numel() * bits / 8}, DType::U8);
  q.scales = Tensor::empty({out, groups}, DType::F32);
  q.zeros = Tensor::empty({out, groups}, DType::F32);
  const float* pw = c.data<float>();
  uint8_t* pp = q.packed.data<uint8_t>();
  float* ps = q.scales.data<float>();
  float* pz = q.zeros.data<float>();
#pragma omp parallel for schedule(static) if (q.numel() >= cpu::kParallelMin)
  for (int64_t r = 0; r < out; ++r) {
    std::vector<uint8_t> codes(static_cast<size_t>(group));
    for (int64_t g = 0; g < groups; ++g) {
      const float* x = pw + r * in + g * group;
      const auto [lo, hi] = std::minmax_element(x, x + group);
      // AutoAWQ pseudo_quantize_tensor in f32; rint rounds half to even like torch.round.
      const float s = std::max(*hi - *lo, 1e-5f) / qmax;
      const float z = std::clamp(std::nearbyint(-*lo / s), 0.0f, qmax) + 0.0f;  // + 0: no −0 zero point
      for (int64_t i = 0; i < group; ++i) {
        codes[i] = static_cast<uint8_t>(std::clamp(std::nearbyint(x[i] / s) + z, 0.0f, qmax));
      }
      ps[r * groups + g] = s;
      pz[r * groups + g] = z;
      pack_codes(codes.data(), group, bits, r * in + g * group, pp);
    }
  }
  return q;
}

void dequantize_rows(const QuantizedWeight& w, int64_t row_begin, int64_t row_end, Tensor& out) {
  ANVIL_DISPATCH_CUDA(out, dequantize_rows, w, row_begin, row_end, out);
  constexpr const char* op = "dequantize_rows";
  check_quantized_weight(w, op);
  cpu::require_cpu(op, "packed", w.packed);
  ANVIL_CHECK(0 <= row_begin && row_begin <= row_end && row_end <= w.out_features, op, ": rows [", row_begin, ", ",
              row_end, ") are not inside the weight's ", w.out_features, " output rows");
  const cpu::Rows vo = cpu::as_rows(op, "out", out);
  const int64_t in = w.in_features, rows = row_end - row_begin;
  ANVIL_CHECK(vo.rows == rows && vo.cols == in, op, ": out has shape ", shape_str(out.shape()), " but rows [",
              row_begin, ", ", row_end, ") of a weight with in_features ", in, " need [", rows, ", ", in, "]");
  const int bits = quant_bits(w.scheme);
  const uint8_t* pp = w.packed.data<uint8_t>();
  if (w.scheme == QuantScheme::NF4) {
    const float* dyn = dynamic_map().data();
    const bool dq = w.double_quant();
    const float* pa = dq ? nullptr : w.absmax.data<float>();
    const uint8_t* pc = dq ? w.absmax_codes.data<uint8_t>() : nullptr;
    const float* ps = dq ? w.absmax_scales.data<float>() : nullptr;
    cpu::parallel_rows(rows, in, [&](int64_t r) {
      float* y = vo.row(r);
      for (int64_t j0 = 0; j0 < in; j0 += w.block) {  // blocks never straddle rows: block divides in
        const int64_t e0 = (row_begin + r) * in + j0, b = e0 / w.block;
        const float amax = dq ? double_quant_absmax(dyn[pc[b]], ps[b / kDoubleQuantBlock], w.absmax_offset) : pa[b];
        for (int64_t i = 0; i < w.block; ++i) y[j0 + i] = kNF4[unpack_code(pp, 4, e0 + i)] * amax;
      }
    });
    return;
  }
  const float* ps = w.scales.data<float>();
  const float* pz = w.zeros.data<float>();
  const int64_t groups = in / w.block;
  cpu::parallel_rows(rows, in, [&](int64_t r) {
    const int64_t row = row_begin + r;
    float* y = vo.row(r);
    for (int64_t g = 0; g < groups; ++g) {
      const float s = ps[row * groups + g], z = pz[row * groups + g];
      const int64_t j0 = g * w.block;
      for (int64_t i = 0; i < w.block; ++i) y[j0 + i] = s * (static_cast<float>(unpack_code(pp, bits, row * in + j0 + i)) - z);
    }
  });
}

}  // namespace anvil::kernels

namespace anvil::kernels {

Tensor nf4_absmax(const QuantizedWeight& w) {
  check_quantized_weight(w, "nf4_absmax");
  ANVIL_CHECK(w.scheme == QuantScheme::NF4, "nf4_absmax: the weight is ", quant_scheme_name(w.scheme),
              ", which has scales and zeros, not absmaxes");
  if (!w.double_quant()) return w.absmax.to(Device::cpu()).clone();
  const Tensor codes = w.absmax_codes.to(Device::cpu()), scales = w.absmax_scales.to(Device::cpu());
  const int64_t n = codes.numel();
  Tensor out = Tensor::empty({n}, DType::F32);
  const float* dyn = dynamic_map_signed();
  const uint8_t* pc = codes.data<uint8_t>();
  const float* ps = scales.data<float>();
  float* po = out.data<float>();
  for (int64_t b = 0; b < n; ++b) po[b] = double_quant_absmax(dyn[pc[b]], ps[b / kDoubleQuantBlock], w.absmax_offset);
  return out;
}

namespace {
// perm's entries as a checked CPU pointer: i32 [in], each in [0, in).
const int32_t* checked_perm(const char* op, const Tensor& perm, int64_t in) {
  const int32_t* p = cpu::contiguous_i32(op, "perm", perm);
  ANVIL_CHECK(perm.numel() == in, op, ": perm has ", perm.numel(), " entries for ", in, " columns");
  for (int64_t j = 0; j < in; ++j)
    ANVIL_CHECK(p[j] >= 0 && p[j] < in, op, ": perm[", j, "] = ", p[j], " is not a column of [0, ", in, ")");
  return p;
}
}  // namespace

void permute_columns(const Tensor& x, const Tensor& perm, Tensor& out) {
  ANVIL_DISPATCH_CUDA(x, permute_columns, x, perm, out);
  constexpr const char* op = "permute_columns";
  const cpu::Rows vx = cpu::as_rows(op, "x", x), vo = cpu::as_rows(op, "out", out);
  ANVIL_CHECK(vo.rows == vx.rows && vo.cols == vx.cols, op, ": out ", out.describe(), " is not x's shape ", x.describe());
  const int32_t* p = checked_perm(op, perm, vx.cols);
  cpu::parallel_rows(vx.rows, vx.cols, [&](int64_t r) {
    const float* xr = vx.row(r);
    float* o = vo.row(r);
    for (int64_t j = 0; j < vx.cols; ++j) o[j] = xr[p[j]];
  });
}

void unpermute_add_columns(const Tensor& dp, const Tensor& perm, Tensor& dx) {
  ANVIL_DISPATCH_CUDA(dp, unpermute_add_columns, dp, perm, dx);
  constexpr const char* op = "unpermute_add_columns";
  const cpu::Rows vp = cpu::as_rows(op, "dp", dp), vx = cpu::as_rows(op, "dx", dx);
  ANVIL_CHECK(vx.rows == vp.rows && vx.cols == vp.cols, op, ": dx ", dx.describe(), " is not dp's shape ", dp.describe());
  const int32_t* p = checked_perm(op, perm, vp.cols);
  cpu::parallel_rows(vp.rows, vp.cols, [&](int64_t r) {
    const float* s = vp.row(r);
    float* d = vx.row(r);
    for (int64_t j = 0; j < vp.cols; ++j) d[p[j]] += s[j];
  });
}

}  // namespace anvil::kernels
