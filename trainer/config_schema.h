// The run config's sections and keys, in documented order: one list shared by the parser (unknown
// keys, suggestions), the YAML writer, and the tests that check both cover every key.
#pragma once
#include <string>
#include <vector>

namespace anvil {

struct RunConfig;

struct ConfigSectionKeys {
  std::string section;
  std::vector<std::string> keys;
};

const std::vector<ConfigSectionKeys>& run_config_schema();

// One resolved setting as the YAML writer shows it: `text` is a plain scalar (numbers, bools,
// `auto`), a string (quoted when YAML would read it as something else), or a flow list.
struct ConfigField {
  enum class Kind { Plain, String, List };
  std::string section, key;
  Kind kind = Kind::Plain;
  std::string text;
  std::vector<std::string> list;
  std::string comment;  // a short note shown after the value
};

// Every setting of `config`, sections and keys in schema order.
std::vector<ConfigField> config_fields(const RunConfig& config);

// The shortest decimal form that reads back as the same double, always with a '.' or exponent.
std::string format_config_double(double v);

}  // namespace anvil
