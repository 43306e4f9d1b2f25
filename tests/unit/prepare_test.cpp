// data/prepare: text and JSONL inputs into a token store, with a toy encoder
// (one id per byte), so these tests do not depend on the tokenizer.
#include <gtest/gtest.h>

#include <filesystem>

#include "tests/support/reference.h"
#include "data/loader.h"
#include "data/prepare.h"
#include "data/token_store.h"
#include "tests/support/data_fixtures.h"

using namespace anvil;
using namespace anvil::testing_data;
namespace fs = std::filesystem;

using anvil::testing::error_of;

namespace {

constexpr int32_t kEos = 256;

PrepareOptions options(const std::vector<std::string>& inputs, const std::string& output) {
  PrepareOptions o;
  o.inputs = inputs;
  o.output = output;
  o.eos_id = kEos;
  o.vocab_size = 257;
  o.tokenizer_hash = "bytes-v1";
  return o;
}

std::vector<int32_t> doc(const std::string& text) {
  std::vector<int32_t> ids = byte_encode(text);
  ids.push_back(kEos);
  return ids;
}

std::vector<std::vector<int32_t>> all_documents(const TokenStore& s) {
  std::vector<std::vector<int32_t>> out;
  for (int64_t d = 0; d < s.num_documents(); ++d) out.push_back(s.document(d));
  return out;
}

}  // namespace

TEST(Prepare, TextBlankLineParagraphs) {
  TempDir tmp;
  const std::string text = "first line\nsecond line\n\n\n  \t\nthird para\r\nstill third\r\n\r\nlast";
  write_file(tmp.file("a.txt"), text);
  const PrepareStats st = prepare_dataset(options({tmp.file("a.txt")}, tmp.file("out.h5")), byte_encode);
  const TokenStore s = TokenStore::open(tmp.file("out.h5"));
  const std::vector<std::vector<int32_t>> want = {doc("first line\nsecond line"), doc("third para\nstill third"),
                                                  doc("last")};
  EXPECT_EQ(all_documents(s), want);
  EXPECT_EQ(st.documents, 3);
  EXPECT_EQ(st.tokens, s.num_tokens());
  EXPECT_EQ(st.tokens, int64_t(want[0].size() + want[1].size() + want[2].size()));
  EXPECT_EQ(st.bytes_read, static_cast<int64_t>(text.size()));
  EXPECT_EQ(st.skipped, 0);
  EXPECT_FALSE(s.has_loss_mask());
  EXPECT_EQ(s.info().tokenizer_hash, "bytes-v1");
  EXPECT_EQ(s.info().vocab_size, 257);
  EXPECT_EQ(s.info().eos_id, kEos);
  EXPECT_NE(s.info().source.find("a.txt"), std::string::npos) << s.info().source;
  EXPECT_FALSE(fs::exists(tmp.file("out.h5.tmp")));
}

TEST(Prepare, TextLineAndFileModes) {
  TempDir tmp;
  write_file(tmp.file("a.txt"), "one\n\ntwo\r\n   \nthree\n");
  write_file(tmp.file("b.txt"), "four\n");
  PrepareOptions o = options({tmp.file("a.txt"), tmp.file("b.txt")}, tmp.file("line.h5"));
  o.text_split = TextSplit::Line;
  PrepareStats st = prepare_dataset(o, byte_encode);
  EXPECT_EQ(all_documents(TokenStore::open(o.output)),
            (std::vector<std::vector<int32_t>>{doc("one"), doc("two"), doc("three"), doc("four")}));
  EXPECT_EQ(st.skipped, 2);  // the empty and the whitespace-only line

  o.text_split = TextSplit::File;
  o.output = tmp.file("file.h5");
  st = prepare_dataset(o, byte_encode);
  EXPECT_EQ(all_documents(TokenStore::open(o.output)),
            (std::vector<std::vector<int32_t>>{doc("one\n\ntwo\r\n   \nthree\n"), doc("four\n")}));
  EXPECT_EQ(st.skipped, 0);
}

TEST(Prepare, ByteOrderMarkIsDropped) {
  TempDir tmp;
  write_file(tmp.file("bom.txt"), "\xEF\xBB\xBFhello\n\nworld\n");
  write_file(tmp.file("bom.jsonl"), "\xEF\xBB\xBF{\"text\": \"json\"}\n");
  prepare_dataset(options({tmp.file("bom.txt"), tmp.file("bom.jsonl")}, tmp.file("bom.h5")), byte_encode);
  EXPECT_EQ(all_documents(TokenStore::open(tmp.file("bom.h5"))),
            (std::vector<std::vector<int32_t>>{doc("hello"), doc("world"), doc("json")}));
}

TEST(Prepare, JsonlTextAndPromptResponse) {
  TempDir tmp;
  write_file(tmp.file("c.jsonl"),
             "{\"text\": \"plain doc\"}\n"
             "\n"
             "{\"prompt\": \"Q: 2+2?\", \"response\": \" 4\", \"id\": 7}\r\n"
             "{\"text\": \"\"}\n"
             "{\"prompt\": \"caf\\u00e9\", \"response\": \"ok\"}\n");
  const PrepareStats st = prepare_dataset(options({tmp.file("c.jsonl")}, tmp.file("c.h5")), byte_encode);
  const TokenStore s = TokenStore::open(tmp.file("c.h5"));
  ASSERT_EQ(s.num_documents(), 3);
  EXPECT_EQ(st.documents, 3);
  EXPECT_EQ(st.skipped, 1);  // the empty text
  ASSERT_TRUE(s.has_loss_mask());
  EXPECT_EQ(s.document(0), doc("plain doc"));
  EXPECT_EQ(s.document_mask(0), std::vector<uint8_t>(10, 1));
  EXPECT_EQ(s.document(1), doc("Q: 2+2? 4"));
  std::vector<uint8_t> mask1(7, 0);  // "Q: 2+2?" is 7 bytes
  mask1.insert(mask1.end(), 3, 1);   // " 4" and EOS
  EXPECT_EQ(s.document_mask(1), mask1);
  EXPECT_EQ(s.document(2), doc("caf\xc3\xa9ok"));  // \u00e9 is two UTF-8 bytes
  std::vector<uint8_t> mask2(5, 0);
  mask2.insert(mask2.end(), 3, 1);
  EXPECT_EQ(s.document_mask(2), mask2);
  EXPECT_EQ(st.masked_tokens, 12);

  // Through the loader: targets on prompt tokens are ignored, response tokens and EOS kept.
  Loader loader(TokenStore::open_shared(tmp.file("c.h5")),
                LoaderConfig{static_cast<int64_t>(s.num_tokens() - 1), 1, 0, 0.0, false}, Split::Train);
  const Batch b = loader.next();
  const int32_t* t = b.targets.data<int32_t>();
  const int64_t doc1 = s.doc_offsets()[1];
  for (int64_t i = doc1; i < doc1 + 7; ++i) EXPECT_EQ(t[i - 1], -100) << i;
  EXPECT_EQ(t[doc1 + 7 - 1], ' ');
  EXPECT_EQ(t[doc1 + 9 - 1], kEos);
}

TEST(Prepare, BadJsonlNamesTheLine) {
  TempDir tmp;
  struct Case {
    std::string content, expect;
  };
  const std::vector<Case> cases = {
      {"{\"text\": \"ok\"}\n\n{\"text\": \"unterminated}\n", "bad.jsonl:3: not valid JSON"},
      {"{\"text\": \"ok\"}\n{\"body\": \"x\"}\n", "bad.jsonl:2: has neither \"text\" nor \"prompt\" + \"response\""},
      {"{\"prompt\": \"x\"}\n", "bad.jsonl:1: has \"prompt\" but no \"response\""},
      {"{\"text\": 5}\n", "bad.jsonl:1: field \"text\" is number, not a string"},
      {"[1, 2]\n", "bad.jsonl:1: a JSON array, not an object"},
      {"{\"text\": \"a\", \"prompt\": \"b\", \"response\": \"c\"}\n", "bad.jsonl:1: has both"},
  };
  for (const Case& c : cases) {
    write_file(tmp.file("bad.jsonl"), c.content);
    const std::string out = tmp.file("bad.h5");
    const std::string msg = error_of([&] { prepare_dataset(options({tmp.file("bad.jsonl")}, out), byte_encode); });
    EXPECT_NE(msg.find(c.expect), std::string::npos) << msg;
    EXPECT_NE(msg.find("{\"text\": \"...\"}"), std::string::npos) << msg;  // shows the fix
    EXPECT_FALSE(fs::exists(out));
    EXPECT_FALSE(fs::exists(out + ".tmp"));
  }
}

TEST(Prepare, AutoFormatByExtension) {
  TempDir tmp;
  write_file(tmp.file("a.md"), "{\"text\": \"not json here\"}\n");
  write_file(tmp.file("b.ndjson"), "{\"text\": \"json\"}\n");
  const PrepareOptions o = options({tmp.file("a.md"), tmp.file("b.ndjson")}, tmp.file("auto.h5"));
  prepare_dataset(o, byte_encode);
  EXPECT_EQ(all_documents(TokenStore::open(o.output)),
            (std::vector<std::vector<int32_t>>{doc("{\"text\": \"not json here\"}"), doc("json")}));

  write_file(tmp.file("data.csv"), "x\n");
  const std::string msg =
      error_of([&] { prepare_dataset(options({tmp.file("data.csv")}, tmp.file("x.h5")), byte_encode); });
  EXPECT_NE(msg.find("data.csv"), std::string::npos) << msg;
  EXPECT_NE(msg.find("set the format"), std::string::npos) << msg;
  EXPECT_EQ(parse_input_format("jsonl"), InputFormat::Jsonl);
  EXPECT_EQ(parse_text_split("line"), TextSplit::Line);
  EXPECT_NE(error_of([] { parse_text_split("para"); }).find("blank_line, line or file"), std::string::npos);
}

TEST(Prepare, InputErrors) {
  TempDir tmp;
  std::string msg =
      error_of([&] { prepare_dataset(options({tmp.file("missing.txt")}, tmp.file("o.h5")), byte_encode); });
  EXPECT_NE(msg.find("missing.txt"), std::string::npos) << msg;

  write_file(tmp.file("empty.txt"), "\n  \n\n");
  msg = error_of([&] { prepare_dataset(options({tmp.file("empty.txt")}, tmp.file("o.h5")), byte_encode); });
  EXPECT_NE(msg.find("no documents"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(tmp.file("o.h5")));
  EXPECT_FALSE(fs::exists(tmp.file("o.h5.tmp")));

  write_file(tmp.file("t.txt"), "fine\n\nbad \xff byte\n");
  PrepareOptions small = options({tmp.file("t.txt")}, tmp.file("o.h5"));
  small.vocab_size = 255;  // byte 0xff (and the EOS) are out of range
  small.eos_id = 0;
  msg = error_of([&] { prepare_dataset(small, byte_encode); });
  EXPECT_NE(msg.find("t.txt:3"), std::string::npos) << msg;
  EXPECT_NE(msg.find("token id 255"), std::string::npos) << msg;

  const EncodeFn throwing = [](const std::string& s) -> std::vector<int32_t> {
    if (s.find("bad") != std::string::npos) throw std::runtime_error("invalid UTF-8");
    return byte_encode(s);
  };
  msg = error_of([&] { prepare_dataset(options({tmp.file("t.txt")}, tmp.file("o.h5")), throwing); });
  EXPECT_NE(msg.find("t.txt:3"), std::string::npos) << msg;
  EXPECT_NE(msg.find("invalid UTF-8"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(tmp.file("o.h5")));
}
