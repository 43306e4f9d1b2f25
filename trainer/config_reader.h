// Internal to trainer/config*.cpp: the YAML side of run-config loading. Applies --set overrides,
// checks the tree's structure (known sections and keys, none twice, suggestions for typos) and
// gives typed reads whose errors say where (file:line:column or the --set argument), the YAML
// path, what was found and how to fix it.
#pragma once
#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/error.h"

namespace anvil {
struct RunConfig;
struct RouterSection;
}  // namespace anvil

namespace anvil::config_detail {

// Where the config text came from, and which YAML paths --set replaced.
struct Context {
  std::string source;                            // file name shown in messages
  std::string base_dir;                          // absolute; relative input paths from the file resolve here
  std::map<std::string, std::string> overrides;  // "training.steps" or "training" -> the --set argument

  // The --set argument that set this path (or its whole section), or null.
  const std::string* override_for(const std::string& path) const;
  // "config.yaml:12:3", "--set training.steps=ten", or the file name when no line is known.
  std::string where(const std::string& path, const YAML::Node& node) const;
  [[noreturn]] void fail(const std::string& path, const YAML::Node& node, const std::string& message) const;
};

// How a value appears in the YAML, for messages: 'ten', "10" (quoted, so a string), a list, ...
std::string shown(const YAML::Node& v);

// A whole number written as 42, -100, 1e5 or 2.0.
bool parse_whole_number(const std::string& s, int64_t& out);

struct Entry {
  YAML::Node key, value;  // default: both null (an absent section)
};

// One section of the config: its entries (already checked against the schema) and typed reads.
// Each read returns false when the key is absent (out keeps its default) and throws on a bad value.
class Section {
 public:
  Section(const Context& ctx, std::string name, Entry self, std::map<std::string, Entry> entries)
      : ctx_(ctx), name_(std::move(name)), self_(std::move(self)), entries_(std::move(entries)) {}

  bool has(const std::string& key) const { return entries_.count(key) > 0; }
  std::string path(const std::string& key) const { return name_ + "." + key; }
  bool is_override(const std::string& key) const { return ctx_.override_for(path(key)) != nullptr; }
  const YAML::Node& value(const std::string& key) const { return entries_.at(key).value; }
  const std::map<std::string, Entry>& entries() const { return entries_; }

  // Fails at the key's value (its key when the value is empty, the section when the key is absent).
  [[noreturn]] void fail(const std::string& key, const std::string& message) const;
  [[noreturn]] void fail_section(const std::string& message) const;
  template <class... Parts>
  void require(bool ok, const std::string& key, const Parts&... parts) const {
    if (!ok) fail(key, detail::concat(parts...));
  }

  bool read(const std::string& key, int64_t& out) const;
  bool read(const std::string& key, double& out) const;  // finite
  bool read(const std::string& key, bool& out) const;
  bool read(const std::string& key, std::string& out) const;
  bool read(const std::string& key, std::vector<std::string>& out) const;  // a single string is a list of one
  // A string that must be one of `choices` (the closest is suggested).
  bool read_choice(const std::string& key, std::string& out, const std::vector<std::string>& choices) const;

 private:
  // The value as a scalar, or an error naming what was found instead (null counts as no value).
  const YAML::Node& scalar(const std::string& key, const char* expected, bool allow_quoted) const;

  const Context& ctx_;
  std::string name_;
  Entry self_;
  std::map<std::string, Entry> entries_;
};

// Parses the YAML text, applies the overrides (recording them in ctx), rejects unknown sections and
// keys with a suggestion, and returns every schema section (absent ones empty).
std::map<std::string, Section> read_config_tree(Context& ctx, const std::string& yaml_text,
                                                const std::vector<std::string>& overrides);

// The router section (trainer/config_router.cpp), read after the task and model sections.
void parse_router(const Section& s, const RunConfig& c, RouterSection& r);

}  // namespace anvil::config_detail
