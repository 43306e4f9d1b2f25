// Tokenizer throughput: train a byte-level BPE to an 8k vocabulary on ~4 MB of
// text and encode/decode it, on one core. Peer: bench/tokenizer_bench.py runs
// Hugging Face tokenizers on the same text.
//
//   tokenizer_bench [--vocab N] [--mb M] [--save tokenizer.json] [--text-out corpus.txt] [FILE ...]
// Without files it concatenates /usr/share/common-licenses/* until M MB (default 4).
// The text is split into documents at blank lines, as a data pipeline would feed it.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <dirent.h>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "data/tokenizer.h"

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<std::string> license_files() {
  std::vector<std::string> files;
  const std::string dir = "/usr/share/common-licenses/";
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d))
      if (e->d_name[0] != '.') files.push_back(dir + e->d_name);
    closedir(d);
  }
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace

int main(int argc, char** argv) {
  int vocab = 8192;
  double mb = 4;
  std::string save, text_out;
  std::vector<std::string> files;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--vocab" && i + 1 < argc) vocab = std::atoi(argv[++i]);
    else if (a == "--mb" && i + 1 < argc) mb = std::atof(argv[++i]);
    else if (a == "--save" && i + 1 < argc) save = argv[++i];
    else if (a == "--text-out" && i + 1 < argc) text_out = argv[++i];
    else files.push_back(a);
  }
  if (files.empty()) files = license_files();
  std::string text;
  const size_t target = static_cast<size_t>(mb * (1 << 20));
  while (text.size() < target) {
    const size_t before = text.size();
    for (const auto& f : files) {
      text += read_file(f);
      if (text.size() >= target) break;
    }
    if (text.size() == before) break;
  }
  if (text.size() > target) text.resize(target);
  if (!text_out.empty()) std::ofstream(text_out, std::ios::binary) << text;
  std::vector<std::string> docs;
  for (size_t start = 0; start < text.size();) {
    size_t end = text.find("\n\n", start);
    end = end == std::string::npos ? text.size() : end + 2;
    docs.push_back(text.substr(start, end - start));
    start = end;
  }
  std::printf("text: %.2f MB in %zu documents from %zu files\n", text.size() / 1048576.0, docs.size(), files.size());

  double t0 = now();
  const anvil::Tokenizer tok = anvil::Tokenizer::train(docs, vocab, 0, {"<|endoftext|>"});
  const double train_s = now() - t0;
  std::printf("train to %d tokens (%d merges): %.2f s\n", tok.vocab_size(), tok.num_merges(), train_s);
  if (!save.empty()) tok.save(save);

  const anvil::Tokenizer fresh = anvil::Tokenizer::from_json(tok.to_json());  // empty word cache
  t0 = now();
  const std::vector<int32_t> ids = fresh.encode(text);
  const double cold_s = now() - t0;
  t0 = now();
  const std::vector<int32_t> again = fresh.encode(text);
  const double warm_s = now() - t0;
  t0 = now();
  const std::string back = fresh.decode(ids);
  const double decode_s = now() - t0;
  std::printf("encode: %zu tokens (%.2f bytes/token), %.2f s cold cache (%.1f MB/s), %.2f s warm (%.1f MB/s)\n",
              ids.size(), double(text.size()) / ids.size(), cold_s, text.size() / 1048576.0 / cold_s, warm_s,
              text.size() / 1048576.0 / warm_s);
  std::printf("decode: %.3f s, round trip %s\n", decode_s, back == text && again == ids ? "exact" : "MISMATCH");
  return back == text && again == ids ? 0 : 1;
}
