// Tokenizer parity with Hugging Face `tokenizers` (tests/parity/tokenizer_oracle.py,
// run with the PyPI python found at configure time): anvil-trained tokenizer.json
// encodes a held-out text identically in tokenizers; a tokenizers-trained one
// encodes identically in anvil; and both trainers learn the same merges.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <unistd.h>

#include "core/error.h"
#include "data/tokenizer.h"
#include "tests/support/reference.h"

namespace anvil {
namespace {

constexpr int32_t kVocab = 3000;
const std::vector<std::string> kSpecials = {"<|endoftext|>", "<|pad|>"};

std::string run_oracle(const std::string& args) {
  const std::string cmd = std::string(ANVIL_PYPI_PYTHON) + " " +
                          testing::source_path("tests/parity/tokenizer_oracle.py") + " " + args + " 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  ANVIL_CHECK(pipe != nullptr, "cannot start ", cmd);
  std::string output;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, pipe)) output.append(buf, n);
  const int status = pclose(pipe);
  ANVIL_CHECK(status == 0, "tokenizers oracle failed (", cmd, "):\n", output,
              "\n(is the PyPI package installed? run scripts/install_deps.sh)");
  return output;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

// Deterministic multi-paragraph text: English-like sentences with contractions,
// numbers, punctuation runs, odd whitespace and non-ASCII words.
std::string generated_text(uint32_t seed, int paragraphs) {
  static const char* words[] = {
      "the", "a", "model", "learns", "to", "predict", "next", "token", "from", "context", "and", "it", "training",
      "data", "is", "of", "in", "with", "attention", "layer", "gradient", "we", "they", "you", "can't", "won't",
      "it's", "they're", "we've", "I'll", "she'd", "I'm", "Transformer", "GPU", "loss", "3.14159", "2024", "1,000",
      "42", "x86_64", "e-mail", "(see", "below)", "\"quoted\"", "...", "!!", "?!", "--", "na\xC3\xAFve",
      "caf\xC3\xA9", "\xC3\xBC" "ber", "Stra\xC3\x9F" "e", "\xCE\xBB\xCF\x8C\xCE\xB3\xCE\xBF\xCF\x82",
      "\xD0\xBC\xD0\xB8\xD1\x80", "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E", "\xE4\xB8\xAD\xE6\x96\x87",
      "\xF0\x9F\x98\x80", "\xF0\x9F\x9A\x80\xF0\x9F\x9A\x80", "\xC2\xBD", "x\xC2\xB2", "\xE2\x80\x94",
      "\xE2\x80\x9Csmart\xE2\x80\x9D"};
  const size_t nwords = sizeof words / sizeof *words;
  std::mt19937 rng(seed);
  std::string out;
  for (int p = 0; p < paragraphs; ++p) {
    const int sentences = 2 + static_cast<int>(rng() % 6);
    for (int s = 0; s < sentences; ++s) {
      const int len = 3 + static_cast<int>(rng() % 14);
      for (int w = 0; w < len; ++w) {
        std::string word = words[rng() % nwords];
        if (w == 0 && word[0] >= 'a' && word[0] <= 'z') word[0] = static_cast<char>(word[0] - 'a' + 'A');
        out += word;
        const uint32_t gap = rng() % 40;
        out += gap == 0 ? "  " : gap == 1 ? "\t" : gap == 2 ? "\xC2\xA0" : " ";
      }
      out += (rng() % 4 == 0) ? "! " : ". ";
    }
    const uint32_t end = rng() % 5;
    out += end == 0 ? "\n\n\n" : end == 1 ? "   \n\n" : end == 2 ? "\r\n\r\n" : "\n\n";
  }
  return out;
}

std::vector<std::string> training_corpus() {
  std::vector<std::string> docs;
  // The GPL text (always present on Debian), one document per paragraph.
  const std::string gpl = read_file("/usr/share/common-licenses/GPL-3");
  size_t start = 0;
  while (start < gpl.size()) {
    size_t end = gpl.find("\n\n", start);
    if (end == std::string::npos) end = gpl.size();
    docs.push_back(gpl.substr(start, end + 2 - start));
    start = end + 2;
  }
  for (uint32_t seed = 0; seed < 40; ++seed) docs.push_back(generated_text(seed, 12));
  docs.back() += "<|endoftext|> in a training text is ordinary text to both trainers";
  return docs;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6)), out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12)), out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18)), out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F)), out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// Code points from all over Unicode (letters, marks, digits, spaces, symbols of
// every script, unassigned ones), mixed with ASCII: checks the character classes.
std::string random_unicode(uint32_t seed, int count) {
  std::mt19937 rng(seed);
  std::string out;
  for (int i = 0; i < count; ++i) {
    uint32_t cp;
    switch (rng() % 4) {
      case 0: cp = 0x20 + rng() % 0x5F; break;          // printable ASCII
      case 1: cp = 0x80 + rng() % (0x3000 - 0x80); break;  // Latin .. CJK symbols, dense in classes
      case 2: cp = 0x3000 + rng() % (0x10000 - 0x3000); break;
      default: cp = 0x10000 + rng() % (0x110000 - 0x10000); break;
    }
    if (cp >= 0xD800 && cp <= 0xDFFF) cp = ' ';
    append_utf8(out, cp);
  }
  return out;
}

std::string held_out_text() {
  std::string text = read_file("/usr/share/common-licenses/Apache-2.0");
  text += "<|endoftext|>";
  text += generated_text(1000, 30);
  text += "<|endoftext|><|pad|><|pad|>  leading spaces, trailing spaces   \n\n\n  \t tabs\t\tand "
          "\xE2\x80\x83" "em-space \xE3\x80\x80 ideographic<|endoftext";
  text += read_file("/usr/share/common-licenses/MPL-2.0").substr(0, 20000);
  text += random_unicode(7, 20000);
  return text;
}

class TokenizerParity : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = ::testing::TempDir() + "anvil_tokenizer_parity_" + std::to_string(::getpid()) + "_";
    const auto corpus = training_corpus();
    write_file(dir_ + "corpus.json", nlohmann::json(corpus).dump());
    write_file(dir_ + "heldout.txt", held_out_text());
    anvil_ = new Tokenizer(Tokenizer::train(corpus, kVocab, 0, kSpecials));
    anvil_->save(dir_ + "anvil.json");
    std::string args = "train " + dir_ + "corpus.json " + std::to_string(kVocab) + " " + dir_ + "hf.json";
    for (const auto& s : kSpecials) args += " '" + s + "'";
    run_oracle(args);
  }
  static void TearDownTestSuite() {
    delete anvil_;
    for (const char* f : {"corpus.json", "heldout.txt", "anvil.json", "hf.json", "ids_anvil.json", "ids_hf.json"})
      std::remove((dir_ + f).c_str());
  }
  static std::vector<int32_t> hf_encode(const std::string& tokenizer_json, const std::string& out_name) {
    run_oracle("encode " + tokenizer_json + " " + dir_ + "heldout.txt " + dir_ + out_name);
    return nlohmann::json::parse(read_file(dir_ + out_name)).get<std::vector<int32_t>>();
  }
  static std::string dir_;
  static Tokenizer* anvil_;
};
std::string TokenizerParity::dir_;
Tokenizer* TokenizerParity::anvil_ = nullptr;

size_t first_mismatch(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
  return i;
}

TEST_F(TokenizerParity, AnvilTrainedTokenizerEncodesIdenticallyInHuggingFace) {
  const std::string text = read_file(dir_ + "heldout.txt");
  const std::vector<int32_t> ours = anvil_->encode(text);
  const std::vector<int32_t> theirs = hf_encode(dir_ + "anvil.json", "ids_anvil.json");
  EXPECT_EQ(ours.size(), theirs.size());
  EXPECT_TRUE(ours == theirs) << "first difference at token " << first_mismatch(ours, theirs) << " of "
                              << ours.size();
  EXPECT_EQ(anvil_->decode(ours), text);
  std::printf("held-out text: %zu bytes -> %zu tokens (%.2f bytes/token)\n", text.size(), ours.size(),
              double(text.size()) / ours.size());
}

TEST_F(TokenizerParity, HuggingFaceTrainedTokenizerEncodesIdenticallyInAnvil) {
  const Tokenizer hf = Tokenizer::load(dir_ + "hf.json");
  EXPECT_EQ(hf.vocab_size(), kVocab);
  EXPECT_EQ(hf.special_tokens(), kSpecials);
  const std::string text = read_file(dir_ + "heldout.txt");
  const std::vector<int32_t> ours = hf.encode(text);
  const std::vector<int32_t> theirs = hf_encode(dir_ + "hf.json", "ids_hf.json");
  EXPECT_EQ(ours.size(), theirs.size());
  EXPECT_TRUE(ours == theirs) << "first difference at token " << first_mismatch(ours, theirs) << " of "
                              << ours.size();
  EXPECT_EQ(hf.decode(ours), text);
}

// anvil reproduces BpeTrainer's tie-breaking (highest count, then the smallest
// (left id, right id)), so the two trainers must agree on every merge and id.
TEST_F(TokenizerParity, TrainersLearnTheSameMerges) {
  const Tokenizer hf = Tokenizer::load(dir_ + "hf.json");
  const auto ours = anvil_->merges(), theirs = hf.merges();
  size_t agree = 0;
  while (agree < ours.size() && agree < theirs.size() && ours[agree] == theirs[agree]) ++agree;
  std::printf("merges: anvil %zu, tokenizers %zu, identical prefix %zu\n", ours.size(), theirs.size(), agree);
  EXPECT_EQ(ours.size(), theirs.size());
  EXPECT_EQ(agree, ours.size()) << "first differing merge: #" << agree;
  EXPECT_EQ(anvil_->hash(), hf.hash());
}

// Tiny alphabets and short texts make many equal counts, so the tie-breaking
// decides most merges; both trainers must still agree on every one.
TEST(TokenizerParityTies, RandomSmallAlphabetCorporaGiveIdenticalMerges) {
  const std::string dir = ::testing::TempDir() + "anvil_tokenizer_ties_" + std::to_string(::getpid()) + "_";
  const char* alphabets[] = {"ab", "abc", "aab c", "ab ", "xyz\n", "a\xC3\xA9 "};
  std::mt19937 rng(11);
  std::vector<std::vector<std::string>> corpora(60);
  for (auto& docs : corpora) {
    const std::string alpha = alphabets[rng() % 6];
    docs.resize(1 + rng() % 5);
    for (auto& d : docs) {
      const size_t len = rng() % 60;
      for (size_t i = 0; i < len; ++i) {
        const char c = alpha[rng() % alpha.size()];
        if (static_cast<unsigned char>(c) == 0xC3 || static_cast<unsigned char>(c) == 0xA9) d += "\xC3\xA9";
        else d += c;
      }
    }
  }
  write_file(dir + "corpora.json", nlohmann::json(corpora).dump());
  constexpr int32_t vocab = 300;
  run_oracle("train-many " + dir + "corpora.json " + std::to_string(vocab) + " " + dir + "hf_");
  int identical = 0;
  for (size_t i = 0; i < corpora.size(); ++i) {
    const std::string path = dir + "hf_" + std::to_string(i) + ".json";
    const Tokenizer ours = Tokenizer::train(corpora[i], vocab);
    const Tokenizer theirs = Tokenizer::load(path);
    EXPECT_EQ(ours.merges(), theirs.merges()) << "corpus " << i << ": " << nlohmann::json(corpora[i]).dump();
    identical += ours.hash() == theirs.hash();
    std::remove(path.c_str());
  }
  std::remove((dir + "corpora.json").c_str());
  std::printf("%d of %zu tie-heavy corpora: identical vocabulary and merges\n", identical, corpora.size());
  EXPECT_EQ(identical, static_cast<int>(corpora.size()));
}

}  // namespace
}  // namespace anvil
