// core/glob.h: the one matcher for param-name patterns, against its documented semantics.
#include <gtest/gtest.h>

#include "core/glob.h"

using anvil::glob_match;

TEST(Glob, StarCrossesDotsAndMatchesTheWholeName) {
  EXPECT_TRUE(glob_match("*", ""));
  EXPECT_TRUE(glob_match("*", "model.layers.0.mlp.up_proj.weight"));
  EXPECT_TRUE(glob_match("model.*.weight", "model.layers.0.mlp.up_proj.weight"));  // spans several parts
  EXPECT_TRUE(glob_match("lm_head.*", "lm_head.weight"));
  EXPECT_FALSE(glob_match("lm_head.*", "model.lm_head.weight"));  // anchored at the start
  EXPECT_FALSE(glob_match("lm_head", "lm_head.weight"));          // and at the end
  EXPECT_TRUE(glob_match("*.bias", "transformer.h.0.attn.c_attn.bias"));
  EXPECT_FALSE(glob_match("*.bias", "transformer.h.0.attn.c_attn.biases"));
  EXPECT_TRUE(glob_match("*a*b*c", "xxaxxbxxbxxc"));  // backtracking over the last '*'
  EXPECT_FALSE(glob_match("*a*b*c", "xxaxxbxxbxxcx"));
  EXPECT_TRUE(glob_match("**", "abc"));
}

TEST(Glob, QuestionMarkIsExactlyOneCharacterDotsIncluded) {
  EXPECT_TRUE(glob_match("model.layers.?.mlp.*", "model.layers.3.mlp.up_proj.weight"));
  EXPECT_FALSE(glob_match("model.layers.?.mlp.*", "model.layers.12.mlp.up_proj.weight"));
  EXPECT_TRUE(glob_match("a?b", "a.b"));
  EXPECT_FALSE(glob_match("?", ""));
  EXPECT_FALSE(glob_match("??", "a"));
}

TEST(Glob, BracketsMatchOneCharacterOfASet) {
  EXPECT_TRUE(glob_match("model.layers.[0-2].*", "model.layers.1.mlp.up_proj.weight"));
  EXPECT_FALSE(glob_match("model.layers.[0-2].*", "model.layers.3.mlp.up_proj.weight"));
  EXPECT_TRUE(glob_match("*.[qk]_proj.weight", "model.layers.0.self_attn.k_proj.weight"));
  EXPECT_FALSE(glob_match("*.[qk]_proj.weight", "model.layers.0.self_attn.v_proj.weight"));
  EXPECT_TRUE(glob_match("*.[!qk]_proj.weight", "model.layers.0.self_attn.v_proj.weight"));
  EXPECT_FALSE(glob_match("*.[^qk]_proj.weight", "model.layers.0.self_attn.q_proj.weight"));
  EXPECT_TRUE(glob_match("[]]", "]"));         // ']' first in the set is literal
  EXPECT_TRUE(glob_match("[a-]", "-"));        // a trailing '-' is literal
  EXPECT_TRUE(glob_match("x[", "x["));         // an unclosed '[' is literal
  EXPECT_FALSE(glob_match("[ab]", "ab"));      // one character only
}

TEST(Glob, BackslashEscapesAMetacharacter) {
  EXPECT_TRUE(glob_match("a\\*", "a*"));
  EXPECT_FALSE(glob_match("a\\*", "ab"));
  EXPECT_TRUE(glob_match("\\?", "?"));
  EXPECT_FALSE(glob_match("\\?", "x"));
  EXPECT_TRUE(glob_match("\\[x]", "[x]"));
}
