// Byte-level pre-tokenization exactly like Hugging Face tokenizers'
// ByteLevel(add_prefix_space=false, use_regex=true): the GPT-2 split regex
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// implemented by hand on UTF-8, then GPT-2's bytes_to_unicode mapping.
//
// Character classes: ASCII is exact (letters a-z A-Z, digits 0-9, whitespace
// \t \n \v \f \r and space). Non-ASCII code points are classified by the table in
// data/unicode_tables.cpp, which scripts/gen_unicode_tables.py reads off the
// `tokenizers` package itself (every code point up to U+10FFFF), so the classes
// agree with HF for the Unicode version that release knows. Newer code points
// (unassigned there) count as 'other'.
//
// Invalid UTF-8 (which HF never sees, since Python strings are valid) is not an
// error: each byte of a malformed sequence is its own 'other' character, so every
// byte string splits and round-trips losslessly.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace anvil {

// Splits `text` into the regex's matches, in order; they cover `text` exactly.
// The views point into `text`. The two-argument form appends to `pieces`.
std::vector<std::string_view> pretokenize(std::string_view text);
void pretokenize(std::string_view text, std::vector<std::string_view>& pieces);

// GPT-2 bytes_to_unicode: byte b -> the UTF-8 of the printable character that
// stands for it in vocab files ("Ġ" for a space, "Ċ" for a newline).
const std::array<std::string, 256>& byte_level_alphabet();
// Maps every byte of `bytes` through byte_level_alphabet().
std::string bytes_to_byte_level(std::string_view bytes);
// The inverse: appends the bytes that `token` stands for to `out`. Characters that
// are not in the alphabet are copied through as their UTF-8 (returns false then).
bool byte_level_to_bytes(std::string_view token, std::string& out);

namespace detail {
enum class CharClass : uint8_t { Other = 0, Letter, Number, Space };
struct CodepointRange {
  uint32_t lo, hi;
  CharClass cls;
};
extern const CodepointRange kUnicodeRanges[];  // sorted, non-overlapping, non-ASCII
extern const size_t kUnicodeRangeCount;
CharClass char_class(uint32_t codepoint);
// Decodes one code point at text[pos] (pos < size). Malformed input yields a
// one-byte character with codepoint 0xFFFFFFFF.
struct Utf8Char {
  uint32_t cp;
  uint32_t len;
};
Utf8Char decode_utf8(std::string_view text, size_t pos);
// Valid UTF-8 throughout (no overlongs, surrogates or values past U+10FFFF).
bool is_valid_utf8(std::string_view text);
}  // namespace detail

}  // namespace anvil
