#include "data/pretokenize.h"

#include <algorithm>

namespace anvil {
namespace detail {

namespace {
constexpr uint32_t kInvalid = 0xFFFFFFFFu;

struct AsciiClasses {
  std::array<CharClass, 128> cls{};
  AsciiClasses() {
    for (int c = 0; c < 128; ++c) {
      CharClass k = CharClass::Other;
      if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) k = CharClass::Letter;
      else if (c >= '0' && c <= '9') k = CharClass::Number;
      else if (c == ' ' || (c >= '\t' && c <= '\r')) k = CharClass::Space;
      cls[c] = k;
    }
  }
};
const AsciiClasses kAscii;
}  // namespace

CharClass char_class(uint32_t cp) {
  if (cp < 128) return kAscii.cls[cp];
  if (cp == kInvalid) return CharClass::Other;
  const CodepointRange* end = kUnicodeRanges + kUnicodeRangeCount;
  const CodepointRange* it = std::upper_bound(
      kUnicodeRanges, end, cp, [](uint32_t v, const CodepointRange& r) { return v < r.lo; });
  if (it == kUnicodeRanges) return CharClass::Other;
  --it;
  return cp <= it->hi ? it->cls : CharClass::Other;
}

Utf8Char decode_utf8(std::string_view s, size_t i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) return {b0, 1};
  uint32_t len, cp, min;
  if (b0 >= 0xC2 && b0 <= 0xDF) len = 2, cp = b0 & 0x1F, min = 0x80;
  else if (b0 >= 0xE0 && b0 <= 0xEF) len = 3, cp = b0 & 0x0F, min = 0x800;
  else if (b0 >= 0xF0 && b0 <= 0xF4) len = 4, cp = b0 & 0x07, min = 0x10000;
  else return {kInvalid, 1};
  if (i + len > s.size()) return {kInvalid, 1};
  for (uint32_t k = 1; k < len; ++k) {
    const auto b = static_cast<unsigned char>(s[i + k]);
    if ((b & 0xC0) != 0x80) return {kInvalid, 1};
    cp = (cp << 6) | (b & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return {kInvalid, 1};
  return {cp, len};
}

bool is_valid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const Utf8Char c = decode_utf8(s, i);
    if (c.cp == kInvalid) return false;
    i += c.len;
  }
  return true;
}

}  // namespace detail

using detail::CharClass;

namespace {

struct Char {
  uint32_t cp;
  uint32_t len;
  CharClass cls;
};

inline Char char_at(std::string_view s, size_t i) {
  const auto b = static_cast<unsigned char>(s[i]);
  if (b < 0x80) return {b, 1, detail::char_class(b)};  // fast path
  const detail::Utf8Char c = detail::decode_utf8(s, i);
  return {c.cp, c.len, detail::char_class(c.cp)};
}

// Length of a contraction ('s 't 're 've 'm 'll 'd, lower case only) at s[i] == '\''.
inline size_t contraction_length(std::string_view s, size_t i) {
  if (i + 1 >= s.size()) return 0;
  const char a = s[i + 1];
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if (i + 2 >= s.size()) return 0;
  const char b = s[i + 2];
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  return 0;
}

// End of the run of characters of class `cls` that starts at `j`.
inline size_t run_end(std::string_view s, size_t j, CharClass cls) {
  while (j < s.size()) {
    const Char c = char_at(s, j);
    if (c.cls != cls) break;
    j += c.len;
  }
  return j;
}

}  // namespace

void pretokenize(std::string_view s, std::vector<std::string_view>& pieces) {
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const Char c = char_at(s, i);
    size_t end = 0;
    if (c.cp == '\'') {
      const size_t k = contraction_length(s, i);
      if (k) end = i + k;
    }
    if (!end && c.cp == ' ' && i + 1 < n) {
      // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+` with the optional space.
      const Char d = char_at(s, i + 1);
      if (d.cls != CharClass::Space) end = run_end(s, i + 1 + d.len, d.cls);
    }
    if (!end && c.cls != CharClass::Space) end = run_end(s, i + c.len, c.cls);
    if (!end) {
      // `\s+(?!\S)` gives back the last whitespace character when a non-space
      // follows the run (so " word" keeps its space); `\s+` takes a lone one.
      size_t j = i, last = i;
      while (j < n) {
        const Char d = char_at(s, j);
        if (d.cls != CharClass::Space) break;
        last = j;
        j += d.len;
      }
      end = (j == n || last == i) ? j : last;
    }
    pieces.emplace_back(s.substr(i, end - i));
    i = end;
  }
}

std::vector<std::string_view> pretokenize(std::string_view text) {
  std::vector<std::string_view> pieces;
  pretokenize(text, pieces);
  return pieces;
}

namespace {

struct ByteLevelMaps {
  std::array<std::string, 256> byte_to_utf8;
  std::array<int16_t, 0x144> cp_to_byte;  // code points up to 256 + 67
  ByteLevelMaps() {
    cp_to_byte.fill(-1);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const uint32_t cp = printable ? static_cast<uint32_t>(b) : 256u + extra++;
      std::string& u = byte_to_utf8[b];
      if (cp < 0x80) {
        u.push_back(static_cast<char>(cp));
      } else {
        u.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        u.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
      }
      cp_to_byte[cp] = static_cast<int16_t>(b);
    }
  }
};
const ByteLevelMaps& maps() {
  static const ByteLevelMaps m;
  return m;
}

}  // namespace

const std::array<std::string, 256>& byte_level_alphabet() { return maps().byte_to_utf8; }

std::string bytes_to_byte_level(std::string_view bytes) {
  const auto& table = maps().byte_to_utf8;
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char ch : bytes) out += table[static_cast<unsigned char>(ch)];
  return out;
}

bool byte_level_to_bytes(std::string_view token, std::string& out) {
  const auto& inverse = maps().cp_to_byte;
  bool all_mapped = true;
  for (size_t i = 0; i < token.size();) {
    const detail::Utf8Char c = detail::decode_utf8(token, i);
    if (c.cp < inverse.size() && inverse[c.cp] >= 0) {
      out.push_back(static_cast<char>(inverse[c.cp]));
    } else {
      out.append(token.substr(i, c.len));
      all_mapped = false;
    }
    i += c.len;
  }
  return all_mapped;
}

}  // namespace anvil
