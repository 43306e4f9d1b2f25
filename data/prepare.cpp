#include "data/prepare.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <system_error>

#include "core/error.h"
#include "data/token_store.h"

namespace anvil {

namespace {
constexpr const char* kJsonlShape = "each line must be one JSON object: {\"text\": \"...\"} or "
                                    "{\"prompt\": \"...\", \"response\": \"...\"}";

bool is_blank(const std::string& s) {
  return std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isspace(c) != 0; });
}

void strip_cr(std::string& line) {
  if (!line.empty() && line.back() == '\r') line.pop_back();
}

// A UTF-8 byte-order mark at the start of a file is not text.
void strip_bom(std::string& first) {
  if (first.compare(0, 3, "\xEF\xBB\xBF") == 0) first.erase(0, 3);
}

const char* format_name(InputFormat f) {
  return f == InputFormat::Auto ? "auto" : f == InputFormat::Text ? "text" : "jsonl";
}
const char* split_name(TextSplit s) {
  return s == TextSplit::BlankLine ? "blank_line" : s == TextSplit::Line ? "line" : "file";
}

InputFormat resolve_format(const std::string& file, InputFormat format) {
  if (format != InputFormat::Auto) return format;
  std::string ext = std::filesystem::path(file).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  if (ext == ".jsonl" || ext == ".ndjson") return InputFormat::Jsonl;
  if (ext == ".txt" || ext == ".text" || ext == ".md") return InputFormat::Text;
  ANVIL_FAIL("prepare: cannot tell the format of '", file, "' from its extension '", ext,
             "' (auto knows .jsonl/.ndjson and .txt/.text/.md) — set the format to text or jsonl");
}

// Encodes documents and hands them to the writer, keeping the statistics.
class DocumentSink {
 public:
  DocumentSink(TokenStoreWriter& writer, const EncodeFn& encode, int32_t eos, PrepareStats& stats)
      : writer_(writer), encode_(encode), eos_(eos), stats_(stats) {}

  void text(const std::string& text, const std::string& where) {
    if (is_blank(text)) {
      ++stats_.skipped;
      return;
    }
    tokens_ = encode(text, where);
    if (tokens_.empty()) {
      ++stats_.skipped;
      return;
    }
    tokens_.push_back(eos_);
    add(nullptr, where);
  }

  void chat(const std::string& prompt, const std::string& response, const std::string& where) {
    if (is_blank(prompt) && is_blank(response)) {
      ++stats_.skipped;
      return;
    }
    tokens_ = encode(prompt, where);
    const size_t n_prompt = tokens_.size();
    const std::vector<int32_t> reply = encode(response, where);
    tokens_.insert(tokens_.end(), reply.begin(), reply.end());
    tokens_.push_back(eos_);
    mask_.assign(tokens_.size(), 1);
    std::fill(mask_.begin(), mask_.begin() + n_prompt, 0);
    add(&mask_, where);
    stats_.masked_tokens += static_cast<int64_t>(n_prompt);
  }

 private:
  std::vector<int32_t> encode(const std::string& text, const std::string& where) {
    try {
      return encode_(text);
    } catch (const std::exception& e) {
      ANVIL_FAIL(where, ": the tokenizer failed on this document: ", e.what(),
                 " — check the input's encoding (UTF-8 expected) and the tokenizer");
    }
  }

  void add(const std::vector<uint8_t>* mask, const std::string& where) {
    try {
      writer_.add_document(tokens_, mask);
    } catch (const Error& e) {
      ANVIL_FAIL(where, ": ", e.what());
    }
    ++stats_.documents;
    stats_.tokens += static_cast<int64_t>(tokens_.size());
  }

  TokenStoreWriter& writer_;
  const EncodeFn& encode_;
  int32_t eos_;
  PrepareStats& stats_;
  std::vector<int32_t> tokens_;
  std::vector<uint8_t> mask_;
};

std::ifstream open_input(const std::string& file) {
  std::ifstream in(file, std::ios::binary);
  ANVIL_CHECK(in, "prepare: cannot read input '", file, "' — check that it exists and is readable");
  return in;
}

void read_text(const std::string& file, TextSplit split, DocumentSink& sink) {
  std::ifstream in = open_input(file);
  if (split == TextSplit::File) {
    std::ostringstream all;
    all << in.rdbuf();
    std::string text = all.str();
    strip_bom(text);
    sink.text(text, file);
    return;
  }
  std::string line, paragraph;
  int64_t line_no = 0, paragraph_line = 0;
  while (std::getline(in, line)) {
    if (++line_no == 1) strip_bom(line);
    strip_cr(line);
    const std::string where = file + ":" + std::to_string(line_no);
    if (split == TextSplit::Line) {
      sink.text(line, where);
    } else if (is_blank(line)) {
      if (!paragraph.empty()) sink.text(paragraph, file + ":" + std::to_string(paragraph_line));
      paragraph.clear();
    } else {
      if (paragraph.empty()) {
        paragraph_line = line_no;
      } else {
        paragraph += '\n';
      }
      paragraph += line;
    }
  }
  if (!paragraph.empty()) sink.text(paragraph, file + ":" + std::to_string(paragraph_line));
}

std::string string_field(const nlohmann::json& obj, const char* key, const std::string& where) {
  const nlohmann::json& v = obj.at(key);
  ANVIL_CHECK(v.is_string(), where, ": field \"", key, "\" is ", v.type_name(), ", not a string — ",
              kJsonlShape);
  return v.get<std::string>();
}

void read_jsonl(const std::string& file, DocumentSink& sink) {
  std::ifstream in = open_input(file);
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    if (++line_no == 1) strip_bom(line);
    strip_cr(line);
    if (is_blank(line)) continue;
    const std::string where = file + ":" + std::to_string(line_no);
    nlohmann::json obj;
    try {
      obj = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      ANVIL_FAIL(where, ": not valid JSON (", e.what(), ") — ", kJsonlShape);
    }
    ANVIL_CHECK(obj.is_object(), where, ": a JSON ", obj.type_name(), ", not an object — ", kJsonlShape);
    const bool has_text = obj.contains("text");
    const bool has_prompt = obj.contains("prompt"), has_response = obj.contains("response");
    ANVIL_CHECK(!(has_text && (has_prompt || has_response)), where,
                ": has both \"text\" and \"prompt\"/\"response\", so it is unclear which tokens to train on — ",
                "keep one form; ", kJsonlShape);
    if (has_text) {
      sink.text(string_field(obj, "text", where), where);
    } else if (has_prompt && has_response) {
      sink.chat(string_field(obj, "prompt", where), string_field(obj, "response", where), where);
    } else if (has_prompt || has_response) {
      ANVIL_FAIL(where, ": has \"", has_prompt ? "prompt" : "response", "\" but no \"",
                 has_prompt ? "response" : "prompt", "\" — ", kJsonlShape);
    } else {
      ANVIL_FAIL(where, ": has neither \"text\" nor \"prompt\" + \"response\" — ", kJsonlShape);
    }
  }
}

std::string describe_inputs(const PrepareOptions& o) {
  std::string s = std::string("anvil data prepare: format ") + format_name(o.format) + ", text_split " +
                  split_name(o.text_split) + ", inputs:";
  const size_t shown = std::min<size_t>(o.inputs.size(), 20);
  for (size_t i = 0; i < shown; ++i) s += " " + o.inputs[i];
  if (shown < o.inputs.size()) s += " ... (" + std::to_string(o.inputs.size() - shown) + " more)";
  return s;
}
}  // namespace

InputFormat parse_input_format(const std::string& name) {
  if (name == "auto") return InputFormat::Auto;
  if (name == "text") return InputFormat::Text;
  if (name == "jsonl") return InputFormat::Jsonl;
  ANVIL_FAIL("unknown input format '", name, "' — use auto, text or jsonl");
}

TextSplit parse_text_split(const std::string& name) {
  if (name == "blank_line") return TextSplit::BlankLine;
  if (name == "line") return TextSplit::Line;
  if (name == "file") return TextSplit::File;
  ANVIL_FAIL("unknown text split '", name, "' — use blank_line, line or file");
}

PrepareStats prepare_dataset(const PrepareOptions& options, const EncodeFn& encode) {
  ANVIL_CHECK(!options.inputs.empty(), "prepare: no input files — give at least one .txt or .jsonl file");
  ANVIL_CHECK(!options.output.empty(), "prepare: no output path — give the store to write, e.g. data/train.h5");
  ANVIL_CHECK(static_cast<bool>(encode), "prepare: no encode function — pass the tokenizer's encode");
  PrepareStats stats;
  std::vector<InputFormat> formats;
  for (const std::string& file : options.inputs) {
    std::error_code ec;
    ANVIL_CHECK(std::filesystem::is_regular_file(file, ec), "prepare: input '", file,
                "' does not exist or is not a file — fix the path");
    formats.push_back(resolve_format(file, options.format));
    stats.bytes_read += static_cast<int64_t>(std::filesystem::file_size(file, ec));
  }
  TokenStoreInfo info;
  info.tokenizer_hash = options.tokenizer_hash;
  info.vocab_size = options.vocab_size;
  info.eos_id = options.eos_id;
  info.source = options.source.empty() ? describe_inputs(options) : options.source;
  TokenStoreWriter writer(options.output, info);  // validates vocab_size, eos_id, hash
  DocumentSink sink(writer, encode, options.eos_id, stats);
  for (size_t i = 0; i < options.inputs.size(); ++i) {
    if (formats[i] == InputFormat::Jsonl) {
      read_jsonl(options.inputs[i], sink);
    } else {
      read_text(options.inputs[i], options.text_split, sink);
    }
  }
  ANVIL_CHECK(stats.documents > 0, "prepare: the inputs hold no documents (", stats.skipped,
              " empty ones skipped) — check the input files and the text split (blank_line, line, file)");
  writer.finish();
  return stats;
}

}  // namespace anvil
