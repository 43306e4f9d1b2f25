// `anvil data prepare`: text / JSONL files -> an HDF5 token store (token_store.h).
//
// Plain text splits into documents by `text_split`:
//   BlankLine  paragraphs separated by one or more blank (whitespace-only) lines;
//              a paragraph's lines are joined with "\n" (default)
//   Line       every line is a document
//   File       every file is one document, byte for byte
// Line ends may be "\n" or "\r\n" (the "\r" is dropped) in BlankLine and Line modes.
// JSONL: one JSON object a line (blank lines are ignored), either
//   {"text": "..."}                     the whole document counts in the loss, or
//   {"prompt": "...", "response": "..."} document = prompt + response; loss mask 0 on
//                                        the prompt's tokens, 1 on the response and EOS.
// Prompt and response are encoded separately and concatenated, so the mask boundary is
// exact (a BPE merge across the boundary is not possible by construction).
// eos_id is appended after every document. Documents that are empty or whitespace
// only (or encode to no tokens) are skipped and counted in `skipped`.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace anvil {

enum class InputFormat { Auto, Text, Jsonl };  // Auto: .jsonl/.ndjson -> Jsonl, .txt/.text/.md -> Text
enum class TextSplit { BlankLine, Line, File };

struct PrepareOptions {
  std::vector<std::string> inputs;
  InputFormat format = InputFormat::Auto;
  TextSplit text_split = TextSplit::BlankLine;
  int32_t eos_id = -1;
  std::string tokenizer_hash;
  int64_t vocab_size = 0;
  std::string output;
  std::string source;  // recorded in the store; empty: a description of the inputs
};

struct PrepareStats {
  int64_t documents = 0;     // written
  int64_t tokens = 0;        // written, EOS included
  int64_t bytes_read = 0;    // input bytes
  int64_t skipped = 0;       // empty documents
  int64_t masked_tokens = 0; // tokens with loss mask 0 (prompts)
};

using EncodeFn = std::function<std::vector<int32_t>(const std::string&)>;

// Parses and names the enums as on the command line ("auto", "text", "jsonl";
// "blank_line", "line", "file"); an unknown name is an Error listing the choices.
InputFormat parse_input_format(const std::string& name);
TextSplit parse_text_split(const std::string& name);

PrepareStats prepare_dataset(const PrepareOptions& options, const EncodeFn& encode);

}  // namespace anvil
