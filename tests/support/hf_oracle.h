// Runs tests/parity/hf_oracle.py (transformers as the oracle) with Debian's torch and the pinned
// transformers that scripts/install_deps.sh puts in ANVIL_HF_PYDEPS.
#pragma once
#include <string>

namespace anvil::testing {

// `args` as the script takes them ("make ...", "logits ...", "generate ..."). A missing install or a
// failing script is a gtest failure carrying the script's output: wrap calls in ASSERT_NO_FATAL_FAILURE.
void run_hf_oracle(const std::string& args);

// `s` single-quoted for the shell.
std::string shell_quote(const std::string& s);

}  // namespace anvil::testing
