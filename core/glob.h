// The one glob matcher for parameter-name patterns (training.trainable, the optimizer's
// output_heads / force_adamw / force_matrix, ...). A pattern matches the WHOLE name:
//   *      any run of characters, possibly empty, dots included: "model.layers.*.mlp.*"
//          matches "model.layers.11.mlp.up_proj.weight" (HF names are dotted paths and
//          one `*` spans several of their parts);
//   ?      exactly one character (a dot too);
//   [...]  one character from the set: single characters and ranges a-z; [!...] or
//          [^...] negates; a `]` right after `[` (or `[!`) is literal; a `[` with no
//          closing `]` is a literal `[`;
//   \c     the character c literally (\* \? \[ \\);
// anything else matches itself. No case folding, no `**` or `{a,b}` (`**` is two `*`).
#pragma once
#include <string>

namespace anvil {

bool glob_match(const std::string& pattern, const std::string& name);

}  // namespace anvil
