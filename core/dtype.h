// Element types and the exact float <-> bf16/f16 conversions (round to nearest even).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace anvil {

enum class DType : uint8_t { F32, BF16, F16, I32, I64, I8, U8 };

size_t dtype_size(DType dt);
const char* dtype_name(DType dt);
DType dtype_from_name(const std::string& name);  // "f32", "bf16", ...; throws on unknown
bool dtype_is_float(DType dt);

template <class T> struct DTypeOf;
template <> struct DTypeOf<float> { static constexpr DType value = DType::F32; };
template <> struct DTypeOf<int32_t> { static constexpr DType value = DType::I32; };
template <> struct DTypeOf<int64_t> { static constexpr DType value = DType::I64; };
template <> struct DTypeOf<int8_t> { static constexpr DType value = DType::I8; };
template <> struct DTypeOf<uint8_t> { static constexpr DType value = DType::U8; };

// Storage types for the 16-bit floats, so data<bf16_t>() is type-checked.
struct bf16_t { uint16_t bits; };
struct f16_t { uint16_t bits; };
template <> struct DTypeOf<bf16_t> { static constexpr DType value = DType::BF16; };
template <> struct DTypeOf<f16_t> { static constexpr DType value = DType::F16; };

inline uint32_t float_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float bits_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

// bf16 is the top half of an f32; round to nearest, ties to even; NaN stays a quiet NaN.
inline uint16_t float_to_bf16(float f) {
  uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding) >> 16);
}
inline float bf16_to_float(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

uint16_t float_to_f16(float f);  // IEEE binary16, RNE, subnormals, overflow to inf
float f16_to_float(uint16_t h);

}  // namespace anvil
