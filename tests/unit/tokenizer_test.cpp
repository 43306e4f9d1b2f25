// Byte-level BPE tokenizer: pre-tokenizer splits, byte mapping, training,
// encode/decode, special tokens, tokenizer.json round trip and validation.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "core/error.h"
#include "data/pretokenize.h"
#include "data/tokenizer.h"

namespace anvil {
namespace {

using Pieces = std::vector<std::string>;

Pieces split(const std::string& text) {
  Pieces out;
  for (std::string_view p : pretokenize(text)) out.emplace_back(p);
  return out;
}

// Expected splits follow from the GPT-2 regex (and agree with tokenizers 0.23).
TEST(PreTokenizer, TrickyStrings) {
  const std::vector<std::pair<std::string, Pieces>> cases = {
      {"Hello world", {"Hello", " world"}},
      {"I'm you're they've we'll he'd it's don't",
       {"I", "'m", " you", "'re", " they", "'ve", " we", "'ll", " he", "'d", " it", "'s", " don", "'t"}},
      {"Don'T", {"Don", "'", "T"}},                    // contractions are lower case only
      {"''s", {"''", "s"}},                            // a punctuation run swallows the apostrophe
      {" 's", {" '", "s"}},
      {"A'LL 'll'S", {"A", "'", "LL", " '", "ll", "'", "S"}},
      {"a  b", {"a", " ", " b"}},                      // the last space joins the word
      {"a   ", {"a", "   "}},                          // trailing spaces stay together
      {"a\nb", {"a", "\n", "b"}},
      {"a \n\n b", {"a", " \n\n", " b"}},
      {"x\n\n", {"x", "\n\n"}},
      {"\t\tx", {"\t", "\t", "x"}},
      {"\n \n", {"\n \n"}},
      {"  ", {"  "}},
      {" ", {" "}},
      {"", {}},
      {"abc123 456def", {"abc", "123", " 456", "def"}},
      {"1,000.50$", {"1", ",", "000", ".", "50", "$"}},
      {"Hi!!! ...?", {"Hi", "!!!", " ...?"}},
      {"x_y-z", {"x", "_", "y", "-", "z"}},
      {"na\xC3\xAFve caf\xC3\xA9", {"na\xC3\xAFve", " caf\xC3\xA9"}},              // naïve café
      {"emoji \xF0\x9F\x98\x80\xF0\x9F\x98\x80 ok", {"emoji", " \xF0\x9F\x98\x80\xF0\x9F\x98\x80", " ok"}},
      {"\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E", {"\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E"}},  // 日本語
      {"\xCE\xA9\xCE\xBC\xCE\xAD\xCE\xB3\xCE\xB1 \xD0\x9F\xD1\x80\xD0\xB8",                 // Ωμέγα При
       {"\xCE\xA9\xCE\xBC\xCE\xAD\xCE\xB3\xCE\xB1", " \xD0\x9F\xD1\x80\xD0\xB8"}},
      {"a\xC2\xA0" "b", {"a", "\xC2\xA0", "b"}},                                   // NBSP is \s
      {"a\xE3\x80\x80\xE3\x80\x80" "b", {"a", "\xE3\x80\x80", "\xE3\x80\x80", "b"}},  // ideographic space
      {"x\xC2\xB2", {"x", "\xC2\xB2"}},                                            // ² is \p{N}
  };
  for (const auto& [text, expected] : cases) EXPECT_EQ(split(text), expected) << "text: '" << text << "'";
}

TEST(PreTokenizer, InvalidUtf8IsOtherAndCovered) {
  EXPECT_EQ(split("a\xFF\xFE" "b"), (Pieces{"a", "\xFF\xFE", "b"}));
  EXPECT_EQ(split("a \xC3"), (Pieces{"a", " \xC3"}));  // truncated sequence
  std::mt19937 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    std::string s(rng() % 64, '\0');
    for (char& c : s) c = static_cast<char>(rng());
    std::string joined;
    for (std::string_view p : pretokenize(s)) {
      EXPECT_FALSE(p.empty());
      joined += p;
    }
    EXPECT_EQ(joined, s);
  }
}

TEST(ByteLevel, AlphabetIsGpt2) {
  const auto& a = byte_level_alphabet();
  EXPECT_EQ(a[' '], "\xC4\xA0");   // Ġ
  EXPECT_EQ(a['\n'], "\xC4\x8A");  // Ċ
  EXPECT_EQ(a['!'], "!");
  EXPECT_EQ(a[0xAD], "\xC5\x83");  // soft hyphen -> U+0143, the last remapped byte
  std::set<std::string> distinct(a.begin(), a.end());
  EXPECT_EQ(distinct.size(), 256u);
  std::string all(256, '\0');
  for (int b = 0; b < 256; ++b) all[b] = static_cast<char>(b);
  std::string back;
  EXPECT_TRUE(byte_level_to_bytes(bytes_to_byte_level(all), back));
  EXPECT_EQ(back, all);
}

TEST(Tokenizer, DefaultHasTheByteSymbolsInGpt2Order) {
  Tokenizer tok;
  EXPECT_EQ(tok.vocab_size(), 256);
  EXPECT_EQ(tok.id_to_token(0), "!");
  EXPECT_EQ(tok.token_to_id("\xC4\xA0"), 220);  // GPT-2's id for "Ġ"
  EXPECT_EQ(tok.encode("!!"), (std::vector<int32_t>{0, 0}));
  EXPECT_EQ(tok.decode(tok.encode("a b")), "a b");
}

TEST(Tokenizer, TrainsHighestCountFirstAndBreaksTiesBySmallestPair) {
  // Words: "ab" x1, " ab" x2, " cd" x3, so ab 3, Ġc 3, cd 3, Ġa 2. Ties go to the
  // smallest (left id, right id): 'a'=64 'b'=65 'c'=66 'd'=67 < 'Ġ'=220.
  const Tokenizer tok = Tokenizer::train({"ab ab ab cd cd cd"}, 260);
  using M = std::pair<std::string, std::string>;
  EXPECT_EQ(tok.merges(), (std::vector<M>{{"a", "b"}, {"c", "d"}, {"\xC4\xA0", "cd"}, {"\xC4\xA0", "ab"}}));
  EXPECT_EQ(tok.vocab_size(), 260);
  EXPECT_EQ(tok.encode("ab cd ab"), (std::vector<int32_t>{256, 258, 259}));
}

TEST(Tokenizer, MinFrequencyStopsTraining) {
  const Tokenizer tok = Tokenizer::train({"ab ab ab cd cd"}, 1000, 3);
  using M = std::pair<std::string, std::string>;
  EXPECT_EQ(tok.merges(), (std::vector<M>{{"a", "b"}}));
  EXPECT_THROW(Tokenizer::train({"x"}, 100), Error);  // smaller than the 256 bytes
  EXPECT_THROW(Tokenizer::train({"x"}, 300, 0, {"<s>", "<s>"}), Error);
}

std::vector<std::string> corpus() {
  std::vector<std::string> docs;
  std::mt19937 rng(1);
  const char* words[] = {"the", "model", "learns", "tokens", "from", "text", "and", "it's", "don't", "caf\xC3\xA9",
                         "\xCE\xB1\xCE\xB2", "2024", "3.14", "!!", "\n", "  ", "data", "training"};
  for (int d = 0; d < 50; ++d) {
    std::string doc;
    for (int w = 0; w < 200; ++w) doc += std::string(words[rng() % 18]) + (rng() % 5 ? " " : "");
    docs.push_back(doc);
  }
  return docs;
}

TEST(Tokenizer, TrainingIsDeterministic) {
  const Tokenizer a = Tokenizer::train(corpus(), 400, 0, {"<|endoftext|>"});
  const Tokenizer b = Tokenizer::train(corpus(), 400, 0, {"<|endoftext|>"});
  EXPECT_EQ(a.vocab_size(), 400);
  EXPECT_EQ(a.merges(), b.merges());
  EXPECT_EQ(a.hash(), b.hash());
  EXPECT_NE(a.hash(), Tokenizer::train(corpus(), 401, 0, {"<|endoftext|>"}).hash());
  EXPECT_NE(a.hash(), Tokenizer().hash());
}

// Random text from ASCII, accents, Greek, CJK, emoji, whitespace and punctuation.
std::string random_text(std::mt19937& rng, size_t chars) {
  const char* pool[] = {"a", "b", "e", "t", " ", " ", "\n", "\t", "'", "'s", "1", "9", ".", ",", "!", "\xC3\xA9",
                        "\xC3\xBC", "\xCE\xBB", "\xD0\x96", "\xE4\xB8\xAD", "\xF0\x9F\x98\x80", "\xC2\xA0", "\xC2\xB2",
                        "\xE2\x80\x94", "the", "<", "|", ">"};
  std::string s;
  for (size_t i = 0; i < chars; ++i) s += pool[rng() % (sizeof pool / sizeof *pool)];
  return s;
}

TEST(Tokenizer, EncodeDecodeRoundTripIsLossless) {
  const Tokenizer tok = Tokenizer::train(corpus(), 600, 0, {"<|endoftext|>"});
  std::mt19937 rng(3);
  for (int trial = 0; trial < 300; ++trial) {
    const std::string text = random_text(rng, rng() % 80);
    const auto ids = tok.encode(text);
    EXPECT_EQ(tok.decode(ids), text);
    EXPECT_EQ(tok.encode(text), ids);  // the cache gives the same answer
  }
  std::string bytes(4096, '\0');  // any byte string, even invalid UTF-8
  for (char& c : bytes) c = static_cast<char>(rng());
  EXPECT_EQ(tok.decode(tok.encode(bytes)), bytes);
}

TEST(Tokenizer, SpecialTokensComeFirstAndMatchVerbatim) {
  const Tokenizer tok = Tokenizer::train(corpus(), 500, 0, {"<|endoftext|>", "<|end|>"});
  EXPECT_EQ(tok.token_to_id("<|endoftext|>"), 0);
  EXPECT_EQ(tok.token_to_id("<|end|>"), 1);
  EXPECT_TRUE(tok.is_special(0));
  EXPECT_FALSE(tok.is_special(2));
  EXPECT_EQ(tok.id_to_token(2), "!");
  const auto ids = tok.encode("the<|endoftext|><|end|> model<|endoftext");
  EXPECT_EQ(tok.decode(ids), "the<|endoftext|><|end|> model<|endoftext");
  const auto the = tok.encode("the"), model = tok.encode(" model"), tail = tok.encode("<|endoftext");
  std::vector<int32_t> expected = the;
  expected.push_back(0);
  expected.push_back(1);
  expected.insert(expected.end(), model.begin(), model.end());
  expected.insert(expected.end(), tail.begin(), tail.end());
  EXPECT_EQ(ids, expected);
  for (int32_t id : tail) EXPECT_FALSE(tok.is_special(id));
}

TEST(Tokenizer, DecodeRejectsOutOfRangeIds) {
  const Tokenizer tok;
  try {
    tok.decode({1, 2, 999});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("999"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("256"), std::string::npos) << e.what();
  }
  EXPECT_THROW(tok.decode({-1}), Error);
  EXPECT_THROW(tok.id_to_token(256), Error);
  EXPECT_FALSE(tok.token_to_id("no such token").has_value());
}

TEST(TokenizerJson, SaveLoadRoundTrip) {
  const Tokenizer tok = Tokenizer::train(corpus(), 450, 0, {"<|endoftext|>"});
  const std::string path = ::testing::TempDir() + "anvil_tok_roundtrip.json";
  tok.save(path);
  const Tokenizer back = Tokenizer::load(path);
  EXPECT_EQ(back.hash(), tok.hash());
  EXPECT_EQ(back.merges(), tok.merges());
  EXPECT_EQ(back.special_tokens(), tok.special_tokens());
  const std::string text = "the model learns<|endoftext|>caf\xC3\xA9 2024";
  EXPECT_EQ(back.encode(text), tok.encode(text));
  std::remove(path.c_str());
}

nlohmann::json small_json() {
  return nlohmann::json::parse(Tokenizer::train(corpus(), 300, 0, {"<|endoftext|>"}).to_json());
}

// Loads `j` (written to a file) and returns the error message ("" if it loaded).
std::string load_error(const nlohmann::json& j, const std::string& name = "bad_tokenizer.json") {
  const std::string path = ::testing::TempDir() + name;
  std::ofstream(path) << j.dump();
  try {
    Tokenizer::load(path);
    return "";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << "error does not name the file: " << e.what();
    return e.what();
  }
}

#define EXPECT_MENTIONS(message, text) \
  EXPECT_NE((message).find(text), std::string::npos) << "expected '" << (text) << "' in: " << (message)

// Merges as "a b" split at the one space.
nlohmann::json merge_pair(const nlohmann::json& m) {
  const std::string s = m.get<std::string>();
  const size_t space = s.find(' ');
  return {s.substr(0, space), s.substr(space + 1)};
}

TEST(TokenizerJson, WritesStringMergesAndReadsBothForms) {
  nlohmann::json j = small_json();
  // Written as "a b" strings, which tokenizers 0.15 (transformers 4.38) requires.
  ASSERT_FALSE(j["model"]["merges"].empty());
  for (const auto& m : j["model"]["merges"]) ASSERT_TRUE(m.is_string()) << m.dump();
  const Tokenizer strings = Tokenizer::from_json(j.dump());
  for (auto& m : j["model"]["merges"]) m = merge_pair(m);
  const Tokenizer pairs = Tokenizer::from_json(j.dump());
  EXPECT_EQ(strings.hash(), pairs.hash());
  EXPECT_EQ(load_error(j), "");
  // A merge token holding a space (possible in files of tokenizers >= 0.20) makes the writer use pairs.
  {
    nlohmann::json spaced = j;
    const int32_t n = pairs.vocab_size();
    spaced["model"]["vocab"]["x y"] = n;
    spaced["model"]["vocab"]["x yz"] = n + 1;
    spaced["model"]["merges"].push_back({"x y", "z"});
    const Tokenizer tok = Tokenizer::from_json(spaced.dump());
    const nlohmann::json written = nlohmann::json::parse(tok.to_json());
    for (const auto& m : written["model"]["merges"]) ASSERT_TRUE(m.is_array()) << m.dump();
    EXPECT_EQ(Tokenizer::from_json(written.dump()).hash(), tok.hash());
    EXPECT_EQ(tok.merges().back(), (std::pair<std::string, std::string>{"x y", "z"}));
  }

  // ignore_merges: a piece that is itself a token is encoded as that token.
  j["model"]["ignore_merges"] = true;
  j["model"]["vocab"]["xyz"] = pairs.vocab_size();
  const Tokenizer ignoring = Tokenizer::from_json(j.dump());
  EXPECT_EQ(ignoring.encode("xyz"), (std::vector<int32_t>{pairs.vocab_size()}));
  EXPECT_EQ(ignoring.decode(ignoring.encode("xyz xy")), "xyz xy");
}

TEST(TokenizerJson, MalformedFilesGiveErrorsNamingTheField) {
  {
    try {
      Tokenizer::load("/nonexistent/dir/tokenizer.json");
      FAIL();
    } catch (const Error& e) {
      EXPECT_MENTIONS(std::string(e.what()), "/nonexistent/dir/tokenizer.json");
    }
  }
  {
    const std::string path = ::testing::TempDir() + "truncated.json";
    std::ofstream(path) << small_json().dump().substr(0, 200);
    try {
      Tokenizer::load(path);
      FAIL();
    } catch (const Error& e) {
      EXPECT_MENTIONS(std::string(e.what()), "truncated.json");
      EXPECT_MENTIONS(std::string(e.what()), "not valid JSON");
    }
  }
  {  // a number beyond double: nlohmann throws out_of_range, not parse_error (found by the fuzzer)
    const std::string path = ::testing::TempDir() + "number_overflow.json";
    std::ofstream(path) << "{\"version\": 1e999}";
    std::string msg = "(no error)";
    try {
      Tokenizer::load(path);
    } catch (const Error& e) {
      msg = e.what();
    }
    EXPECT_MENTIONS(msg, "number_overflow.json");
    EXPECT_MENTIONS(msg, "not valid JSON");
  }
  nlohmann::json j;
  j = small_json(), j["model"]["type"] = "WordPiece";
  EXPECT_MENTIONS(load_error(j), "model.type");
  j = small_json(), j.erase("model");
  EXPECT_MENTIONS(load_error(j), "'model'");
  j = small_json(), j["model"]["merges"][3] = {"\xC4\xA0", "zzz-unknown"};
  EXPECT_MENTIONS(load_error(j), "model.merges[3]");
  EXPECT_MENTIONS(load_error(j), "zzz-unknown");
  j = small_json(), j["model"]["merges"][0] = {"x", "q"};  // both known, "xq" is not
  EXPECT_MENTIONS(load_error(j), "\"xq\"");
  j = small_json(), j["model"]["merges"][1] = "a b c";
  EXPECT_MENTIONS(load_error(j), "model.merges[1]");
  j = small_json(), j["model"]["merges"][2] = 7;
  EXPECT_MENTIONS(load_error(j), "model.merges[2]");
  j = small_json(), j["model"]["vocab"]["!"] = 5;  // duplicate id 5
  EXPECT_MENTIONS(load_error(j), "duplicate id 5");
  j = small_json(), j["model"]["vocab"]["!"] = 1000;  // leaves a gap
  EXPECT_MENTIONS(load_error(j), "not contiguous");
  EXPECT_MENTIONS(load_error(j), "id 1 is unused");
  j = small_json(), j["model"]["vocab"]["!"] = "one";
  EXPECT_MENTIONS(load_error(j), "model.vocab");
  j = small_json(), j["model"]["vocab"] = nlohmann::json::array();
  EXPECT_MENTIONS(load_error(j), "model.vocab");
  j = small_json(), j["added_tokens"][0]["id"] = 7;
  EXPECT_MENTIONS(load_error(j), "added_tokens[0]");
  j = small_json(), j["added_tokens"].push_back(j["added_tokens"][0]), j["added_tokens"][1]["content"] = "<x>";
  EXPECT_MENTIONS(load_error(j), "added_tokens[1]");
  j = small_json(), j["added_tokens"][0]["content"] = "<new>", j["added_tokens"][0]["id"] = 500;
  EXPECT_MENTIONS(load_error(j), "added_tokens");
  EXPECT_MENTIONS(load_error(j), "not contiguous");
  j = small_json(), j["added_tokens"][0]["lstrip"] = true;
  EXPECT_MENTIONS(load_error(j), "added_tokens[0].lstrip");
  j = small_json(), j["pre_tokenizer"]["add_prefix_space"] = true;
  EXPECT_MENTIONS(load_error(j), "pre_tokenizer.add_prefix_space");
  j = small_json(), j["pre_tokenizer"] = {{"type", "Whitespace"}};
  EXPECT_MENTIONS(load_error(j), "pre_tokenizer");
  j = small_json(), j["normalizer"] = {{"type", "NFC"}};
  EXPECT_MENTIONS(load_error(j), "normalizer");
  j = small_json(), j["post_processor"] = {{"type", "TemplateProcessing"}};
  EXPECT_MENTIONS(load_error(j), "post_processor");
  j = small_json(), j["model"]["dropout"] = 0.1;
  EXPECT_MENTIONS(load_error(j), "model.dropout");
  j = small_json(), j["model"]["merges"] = "nope";
  EXPECT_MENTIONS(load_error(j), "model.merges");
  EXPECT_MENTIONS(load_error(nlohmann::json::array()), "top level");
}

TEST(TokenizerJson, MissingByteSymbolFailsAtEncodeNamingTheByte) {
  nlohmann::json j = small_json();
  // Rebuild the vocabulary without the byte 'z' and the merges that use it (like
  // tokenizers trained without initial_alphabet on text that lacks 'z').
  nlohmann::json vocab = nlohmann::json::object();
  int32_t id = 0;
  std::vector<std::pair<int64_t, std::string>> ordered;
  for (const auto& [token, value] : j["model"]["vocab"].items()) ordered.emplace_back(value.get<int64_t>(), token);
  std::sort(ordered.begin(), ordered.end());
  for (const auto& [old_id, token] : ordered)
    if (token.find('z') == std::string::npos) vocab[token] = id++;
  nlohmann::json merges = nlohmann::json::array();
  for (const auto& m : j["model"]["merges"])
    if (m.get<std::string>().find('z') == std::string::npos)
      merges.push_back(m);
  j["model"]["vocab"] = vocab, j["model"]["merges"] = merges;
  j["added_tokens"][0]["id"] = vocab["<|endoftext|>"];
  const Tokenizer tok = Tokenizer::from_json(j.dump());
  EXPECT_EQ(tok.decode(tok.encode("abc")), "abc");
  try {
    tok.encode("zebra");
    FAIL();
  } catch (const Error& e) {
    EXPECT_MENTIONS(std::string(e.what()), "0x7A");
  }
}

}  // namespace
}  // namespace anvil
