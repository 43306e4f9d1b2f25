#include "tests/support/hf_oracle.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>

#include "tests/support/reference.h"

namespace anvil::testing {

void run_hf_oracle(const std::string& args) {
  const std::string pydeps = ANVIL_HF_PYDEPS;
  ASSERT_TRUE(std::filesystem::exists(pydeps + "/transformers/__init__.py"))
      << "transformers is not installed in " << pydeps << " — run `make deps` (scripts/install_deps.sh)";
  const std::string cmd = "PYTHONPATH=" + pydeps + " HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 " +
                          std::string(ANVIL_TORCH_PYTHON) + " " + source_path("tests/parity/hf_oracle.py") + " " +
                          args + " 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  ASSERT_NE(pipe, nullptr) << cmd;
  std::string output;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, pipe)) output.append(buf, n);
  ASSERT_EQ(pclose(pipe), 0) << "oracle failed: " << cmd << "\n" << output;
}

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

}  // namespace anvil::testing
