// Tokenizer <-> Hugging Face tokenizer.json. Writing produces what tokenizers
// saves for a ByteLevel BPE (pre-tokenizer, decoder and post-processor ByteLevel;
// merges in the "a b" form that every tokenizers version reads, 0.15 included, or the
// ["a", "b"] form of tokenizers >= 0.20 when a merged token holds a space); reading
// accepts both merge forms and checks every field anvil relies on, throwing
// anvil::Error that names the file and the field.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "data/tokenizer.h"

namespace anvil {

using nlohmann::json;

namespace {

std::string quoted(const std::string& s) { return json(s).dump(-1, ' ', false, json::error_handler_t::replace); }

std::string type_name(const json& v) { return v.is_null() ? "null" : v.type_name(); }

// The "type" of an optional component ("" when null or absent).
std::string component_type(const json& root, const char* key, const std::string& where) {
  const auto it = root.find(key);
  if (it == root.end() || it->is_null()) return "";
  ANVIL_CHECK(it->is_object(), where, ": field '", key, "' must be an object or null, not ", type_name(*it));
  const auto t = it->find("type");
  ANVIL_CHECK(t != it->end() && t->is_string(), where, ": field '", key, ".type' is missing or not a string");
  return t->get<std::string>();
}

bool bool_field(const json& obj, const char* key, bool fallback, const std::string& field) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return fallback;
  ANVIL_CHECK(it->is_boolean(), field, ".", key, " must be true or false, not ", it->dump());
  return it->get<bool>();
}

void check_byte_level(const json& root, const char* key, const std::string& where, bool required) {
  const std::string type = component_type(root, key, where);
  if (type.empty() && !required) return;
  ANVIL_CHECK(type == "ByteLevel", where, ": field '", key, "' is ", type.empty() ? "missing" : "'" + type + "'",
              " but anvil implements only the ByteLevel ", key,
              " of a GPT-2 style byte-level BPE — use a tokenizer.json with \"type\": \"ByteLevel\" there");
  if (std::string(key) != "pre_tokenizer") return;
  const json& pre = root.at(key);
  const std::string field = where + ": field 'pre_tokenizer";
  ANVIL_CHECK(pre.contains("add_prefix_space"), field, ".add_prefix_space' is missing — set it to false");
  ANVIL_CHECK(!bool_field(pre, "add_prefix_space", false, field), field,
              ".add_prefix_space' is true; anvil implements ByteLevel(add_prefix_space=false) only — set it to false");
  ANVIL_CHECK(bool_field(pre, "use_regex", true, field), field,
              ".use_regex' is false; anvil implements the GPT-2 split regex (use_regex=true) only");
}

}  // namespace

Tokenizer Tokenizer::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  ANVIL_CHECK(in.good(), "Tokenizer::load: cannot open '", path,
              "' — check the path; a Hugging Face tokenizer.json (or one saved by Tokenizer::save) is expected");
  std::stringstream buffer;
  buffer << in.rdbuf();
  return parse_json(buffer.str(), path);
}

Tokenizer Tokenizer::from_json(const std::string& json_text, const std::string& origin) {
  return parse_json(json_text, origin);
}

Tokenizer Tokenizer::parse_json(const std::string& text, const std::string& origin) {
  const std::string where = "tokenizer file '" + origin + "'";
  json root;
  try {
    root = json::parse(text);
  } catch (const json::exception& e) {  // parse_error, and out_of_range for a number beyond double (found by fuzzing)
    ANVIL_FAIL(where, ": not valid JSON (", e.what(), ") — the file is truncated or not a tokenizer.json");
  }
  try {
    ANVIL_CHECK(root.is_object(), where, ": the top level must be a JSON object, not ", type_name(root));
    const auto model_it = root.find("model");
    ANVIL_CHECK(model_it != root.end() && model_it->is_object(), where,
                ": field 'model' is missing or not an object — a tokenizer.json holds its model there");
    const json& model = *model_it;
    const auto type_it = model.find("type");
    if (type_it != model.end()) {
      ANVIL_CHECK(type_it->is_string() && type_it->get<std::string>() == "BPE", where, ": field 'model.type' is ",
                  type_it->dump(), " but anvil reads only \"BPE\" models (byte-level BPE, GPT-2 style)");
    }
    // Options that would change the encoding and that anvil does not implement.
    const auto dropout = model.find("dropout");
    ANVIL_CHECK(dropout == model.end() || dropout->is_null() || (dropout->is_number() && dropout->get<double>() == 0),
                where, ": field 'model.dropout' is ", dropout->dump(),
                "; anvil does not implement BPE dropout — set it to null");
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      const auto it = model.find(key);
      ANVIL_CHECK(it == model.end() || it->is_null() || (it->is_string() && it->get<std::string>().empty()), where,
                  ": field 'model.", key, "' is ", it->dump(), "; byte-level BPE uses none — set it to null");
    }
    const bool ignore_merges = bool_field(model, "ignore_merges", false, where + ": field 'model");

    // Vocabulary: token -> id, ids unique and contiguous from 0.
    const auto vocab_it = model.find("vocab");
    ANVIL_CHECK(vocab_it != model.end() && vocab_it->is_object(), where,
                ": field 'model.vocab' is missing or not an object of token -> id");
    const json& vocab = *vocab_it;
    const size_t n = vocab.size();
    std::vector<std::string> tokens(n);
    std::vector<uint8_t> filled(n, 0);
    std::map<int64_t, std::string> out_of_range;  // ids >= n, to name the gap
    for (const auto& [token, value] : vocab.items()) {
      ANVIL_CHECK(value.is_number_integer() && value.get<int64_t>() >= 0, where, ": field 'model.vocab' gives token ",
                  quoted(token), " the id ", value.dump(), " — ids must be non-negative integers");
      const int64_t id = value.get<int64_t>();
      if (id >= static_cast<int64_t>(n)) {
        out_of_range.emplace(id, token);
        continue;
      }
      ANVIL_CHECK(!filled[id], where, ": field 'model.vocab' has duplicate id ", id, ": tokens ", quoted(tokens[id]),
                  " and ", quoted(token), " — each id must belong to exactly one token");
      tokens[id] = token;
      filled[id] = 1;
    }
    if (!out_of_range.empty()) {
      const size_t missing = std::find(filled.begin(), filled.end(), 0) - filled.begin();
      ANVIL_FAIL(where, ": field 'model.vocab' ids are not contiguous: token ", quoted(out_of_range.begin()->second),
                 " has id ", out_of_range.begin()->first, " but the ", n, " tokens must use ids 0..", n - 1,
                 " (id ", missing, " is unused) — renumber the vocabulary");
    }

    std::unordered_map<std::string, int32_t> ids;
    ids.reserve(n * 2);
    for (size_t i = 0; i < n; ++i) ids.emplace(tokens[i], static_cast<int32_t>(i));

    // Added tokens: verbatim-matched specials, either in model.vocab with the same
    // id or extending it contiguously.
    std::vector<int32_t> special_ids;
    std::map<int64_t, std::string> extra;  // id -> content, beyond model.vocab
    const auto added_it = root.find("added_tokens");
    if (added_it != root.end() && !added_it->is_null()) {
      ANVIL_CHECK(added_it->is_array(), where, ": field 'added_tokens' must be an array, not ", type_name(*added_it));
      std::unordered_map<int64_t, size_t> seen;
      for (size_t i = 0; i < added_it->size(); ++i) {
        const json& a = (*added_it)[i];
        const std::string field = where + ": field 'added_tokens[" + std::to_string(i) + "]";
        ANVIL_CHECK(a.is_object(), field, "' must be an object with 'id' and 'content'");
        const auto id_it = a.find("id");
        const auto content_it = a.find("content");
        ANVIL_CHECK(id_it != a.end() && id_it->is_number_integer() && id_it->get<int64_t>() >= 0, field,
                    ".id' is missing or not a non-negative integer");
        ANVIL_CHECK(content_it != a.end() && content_it->is_string() && !content_it->get<std::string>().empty(),
                    field, ".content' is missing, not a string, or empty");
        for (const char* opt : {"single_word", "lstrip", "rstrip"})
          ANVIL_CHECK(!bool_field(a, opt, false, field), field, ".", opt,
                      "' is true; anvil matches added tokens verbatim only — set it to false");
        const int64_t id = id_it->get<int64_t>();
        const std::string content = content_it->get<std::string>();
        const auto [prev, fresh] = seen.emplace(id, i);
        ANVIL_CHECK(fresh, field, "' ", quoted(content), " reuses id ", id, " of added_tokens[", prev->second,
                    "] — each added token needs its own id");
        const auto in_vocab = ids.find(content);
        if (in_vocab != ids.end()) {
          ANVIL_CHECK(in_vocab->second == id, field, "' ", quoted(content), " has id ", id,
                      " but model.vocab gives it id ", in_vocab->second, " — make the two agree");
        } else {
          ANVIL_CHECK(id >= static_cast<int64_t>(n), field, "' ", quoted(content), " has id ", id,
                      ", which model.vocab already gives to ", quoted(tokens[id]),
                      " — duplicate id; give the added token a new id");
          extra.emplace(id, content);
        }
        special_ids.push_back(static_cast<int32_t>(id));
      }
    }
    int64_t next_id = static_cast<int64_t>(n);
    for (const auto& [id, content] : extra) {
      ANVIL_CHECK(id == next_id, where, ": field 'added_tokens' ids are not contiguous: ", quoted(content),
                  " has id ", id, " but the next free id after the vocabulary is ", next_id,
                  " — number added tokens right after model.vocab");
      ANVIL_CHECK(ids.emplace(content, static_cast<int32_t>(id)).second, where, ": field 'added_tokens' lists ",
                  quoted(content), " twice — list it once");
      tokens.push_back(content);
      ++next_id;
    }

    // Merges: "a b" strings or ["a", "b"] pairs of known tokens whose concatenation is known.
    const auto merges_it = model.find("merges");
    ANVIL_CHECK(merges_it != model.end() && merges_it->is_array(), where,
                ": field 'model.merges' is missing or not an array");
    std::vector<Merge> merges;
    merges.reserve(merges_it->size());
    for (size_t i = 0; i < merges_it->size(); ++i) {
      const json& m = (*merges_it)[i];
      const std::string field = where + ": field 'model.merges[" + std::to_string(i) + "]'";
      std::string a, b;
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const size_t space = s.find(' ');
        ANVIL_CHECK(space != std::string::npos && s.find(' ', space + 1) == std::string::npos, field, " is ",
                    quoted(s), " — a string merge must be two tokens separated by one space");
        a = s.substr(0, space), b = s.substr(space + 1);
      } else {
        ANVIL_CHECK(m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string(), field, " is ", m.dump(),
                    " — a merge must be \"a b\" or [\"a\", \"b\"]");
        a = m[0].get<std::string>(), b = m[1].get<std::string>();
      }
      const auto ia = ids.find(a), ib = ids.find(b);
      ANVIL_CHECK(ia != ids.end(), field, " refers to unknown token ", quoted(a),
                  " — merges may only use tokens of model.vocab");
      ANVIL_CHECK(ib != ids.end(), field, " refers to unknown token ", quoted(b),
                  " — merges may only use tokens of model.vocab");
      const auto ir = ids.find(a + b);
      ANVIL_CHECK(ir != ids.end(), field, " (", quoted(a), ", ", quoted(b), ") makes ", quoted(a + b),
                  ", which is not in model.vocab — add it or drop the merge");
      merges.push_back({ia->second, ib->second, ir->second});
    }

    const std::string normalizer = component_type(root, "normalizer", where);
    ANVIL_CHECK(normalizer.empty(), where, ": field 'normalizer' is '", normalizer,
                "' but anvil applies no normalizer — set it to null");
    check_byte_level(root, "pre_tokenizer", where, true);
    check_byte_level(root, "decoder", where, false);
    check_byte_level(root, "post_processor", where, false);

    Tokenizer tok;
    tok.tokens_ = std::move(tokens);
    tok.merges_ = std::move(merges);
    tok.special_ids_ = std::move(special_ids);
    tok.ignore_merges_ = ignore_merges;
    tok.finalize(where);
    return tok;
  } catch (const json::exception& e) {
    ANVIL_FAIL(where, ": unexpected JSON structure (", e.what(), ")");
  }
}

std::string Tokenizer::to_json() const {
  // Written by hand (nlohmann only escapes strings) to keep tokenizers' field order
  // and stay linear in the vocabulary size.
  auto str = [](const std::string& s) { return quoted(s); };
  const char* byte_level = "\"ByteLevel\",\n";
  std::string out;
  out += "{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n  \"added_tokens\": [";
  for (size_t k = 0; k < special_ids_.size(); ++k) {
    out += k ? ",\n" : "\n";
    out += "    {\n      \"id\": " + std::to_string(special_ids_[k]) + ",\n      \"content\": " +
           str(tokens_[special_ids_[k]]) +
           ",\n      \"single_word\": false,\n      \"lstrip\": false,\n      \"rstrip\": false,\n"
           "      \"normalized\": false,\n      \"special\": true\n    }";
  }
  out += special_ids_.empty() ? "],\n" : "\n  ],\n";
  out += "  \"normalizer\": null,\n";
  out += std::string("  \"pre_tokenizer\": {\n    \"type\": ") + byte_level +
         "    \"add_prefix_space\": false,\n    \"trim_offsets\": true,\n    \"use_regex\": true\n  },\n";
  out += std::string("  \"post_processor\": {\n    \"type\": ") + byte_level +
         "    \"add_prefix_space\": true,\n    \"trim_offsets\": false,\n    \"use_regex\": true\n  },\n";
  out += std::string("  \"decoder\": {\n    \"type\": ") + byte_level +
         "    \"add_prefix_space\": true,\n    \"trim_offsets\": true,\n    \"use_regex\": true\n  },\n";
  out += "  \"model\": {\n    \"type\": \"BPE\",\n    \"dropout\": null,\n    \"unk_token\": null,\n"
         "    \"continuing_subword_prefix\": null,\n    \"end_of_word_suffix\": null,\n"
         "    \"fuse_unk\": false,\n    \"byte_fallback\": false,\n    \"ignore_merges\": ";
  out += ignore_merges_ ? "true" : "false";
  out += ",\n    \"vocab\": {";
  for (size_t id = 0; id < tokens_.size(); ++id) {
    out += id ? ",\n      " : "\n      ";
    out += str(tokens_[id]) + ": " + std::to_string(id);
  }
  out += tokens_.empty() ? "},\n" : "\n    },\n";
  // "a b" is ambiguous only when a token holds a space (byte-level tokens spell it 'Ġ').
  bool spaced = false;
  for (const Merge& m : merges_)
    spaced = spaced || tokens_[m.left].find(' ') != std::string::npos || tokens_[m.right].find(' ') != std::string::npos;
  out += "    \"merges\": [";
  for (size_t r = 0; r < merges_.size(); ++r) {
    out += r ? ",\n      " : "\n      ";
    const std::string& a = tokens_[merges_[r].left];
    const std::string& b = tokens_[merges_[r].right];
    out += spaced ? "[" + str(a) + ", " + str(b) + "]" : str(a + " " + b);
  }
  out += merges_.empty() ? "]\n" : "\n    ]\n";
  out += "  }\n}\n";
  return out;
}

void Tokenizer::save(const std::string& path) const {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    ANVIL_CHECK(out.good(), "Tokenizer::save: cannot write '", tmp,
                "' — check that the directory exists and is writable");
    const std::string text = to_json();
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    out.close();
    ANVIL_CHECK(out.good(), "Tokenizer::save: writing '", tmp, "' failed (disk full?)");
  }
  ANVIL_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "Tokenizer::save: cannot rename '", tmp, "' to '", path,
              "' — check permissions on the target");
}

}  // namespace anvil
