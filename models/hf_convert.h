// Hugging Face checkpoint interop: a directory holding config.json, model.safetensors (or
// model.safetensors.index.json + shards) and tokenizer.json maps to a TransformerLM and back.
// Model types: gpt2 (GPT2LMHeadModel), llama (LlamaForCausalLM, rope_scaling linear/llama3),
// qwen2 (Qwen2ForCausalLM: q/k/v biases, none on o_proj) and mistral (MistralForCausalLM:
// sliding_window attention).
//
//   ModelConfig config = read_hf_config("gpt2-small/");       // rejects what anvil cannot run
//   TransformerLM model(config);
//   load_hf_weights(model, SafetensorsIndex::open("gpt2-small/"));
//   save_hf(model, &tokenizer, "out/");                       // transformers' from_pretrained reads it
//
// Names: anvil's params already carry Hugging Face names ("transformer.h.0.attn.c_attn.weight",
// "model.layers.0.self_attn.q_proj.weight"), so the mapping is the identity except:
//   - GPT-2's Conv1D weights (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj) are stored [in, out]
//     by Hugging Face and [out, in] by anvil: transposed on the way in and out.
//   - Files written from the base model class (GPT2Model, LlamaModel) lack the "transformer." /
//     "model." prefix; both spellings load.
//   - Buffers some checkpoints carry are skipped: GPT-2's attn.bias / attn.masked_bias (causal
//     masks) and Llama's self_attn.rotary_emb.inv_freq.
//   - A tied head (tie_word_embeddings) has no lm_head.weight param; a file that carries one
//     anyway loads when it equals the embedding (as transformers would tie it) and is an error
//     otherwise. save_hf writes the tied matrix once, as transformers does.
// Weights in f32, bf16 or f16 load exactly into anvil's f32 params.
#pragma once
#include <cstdint>
#include <optional>
#include <set>
#include <string>

#include <nlohmann/json_fwd.hpp>

#include "core/param.h"
#include "data/safetensors.h"
#include "models/config.h"
#include "models/medusa_heads.h"

namespace anvil {

class TransformerLM;
class Tokenizer;

// DIR/config.json (or a path to the .json itself) as a ModelConfig. Supports model_type gpt2,
// llama, qwen2 and mistral; any field value anvil would compute differently (a rope_scaling type
// other than default/linear/llama3, sliding_window on llama, Qwen2's use_sliding_window=true,
// GPT-2's scale_attn_weights=false or scale_attn_by_inverse_layer_idx, cross-attention, an
// unsupported activation, ...) is an anvil::Error naming the file, the field and its value.
ModelConfig read_hf_config(const std::string& dir_or_file);
// The same checks on a parsed config.json object; `source` names it in messages.
ModelConfig hf_config_from_json(const nlohmann::json& j, const std::string& source);

// The special token anvil treats as end of text (and transformers' bos/eos) in an export.
inline constexpr const char* kHfEosToken = "<|endoftext|>";

// A complete config.json for `config`: its Hugging Face fields plus architectures, model_type,
// torch_dtype "float32", bos/eos_token_id (eos_token_id or null, so generate stops where anvil
// does) and the values transformers would otherwise default differently.
nlohmann::json hf_config_json(const ModelConfig& config, std::optional<int32_t> eos_token_id = std::nullopt);

// Copies every param of `model` from the checkpoint. Every param must be present at the
// expected shape (Conv1D layout for GPT-2); every tensor in the files must be used, be a
// known buffer, or be a tied lm_head.weight equal to the embedding. Errors name the file,
// the tensor and both shapes. Nothing is partially loaded on error: the checks run first.
// `quantized` (module names, models/hf_quant.h): Linears whose weight the file holds quantized —
// their `.weight` param is neither checked nor loaded here, and their tensors `<module>.*` count as used.
void load_hf_weights(TransformerLM& model, const SafetensorsIndex& index, const std::set<std::string>& quantized = {});

// Writes DIR/config.json, DIR/model.safetensors (sharded with an index when the weights exceed
// max_shard_bytes, as save_pretrained does) and, when `tokenizer` is given, DIR/tokenizer.json
// and DIR/tokenizer_config.json (PreTrainedTokenizerFast, <|endoftext|> as bos/eos when the
// tokenizer has it), so AutoTokenizer.from_pretrained(DIR) loads it.
// A Linear with a LoRA adapter or a quantized weight is written merged (LinearWeight::merged():
// dequantized, the adapter added) under its plain name: a dense model transformers loads as it is.
// Creates DIR; refuses to mix with an existing checkpoint of the other (single/sharded) form.
void save_hf(const TransformerLM& model, const Tokenizer* tokenizer, const std::string& dir,
             uint64_t max_shard_bytes = 5'000'000'000ull);
// save_hf's parts, for exports that add tensors of their own (models/hf_quant.h): `p` as the f32
// tensor the HF file holds (Conv1D transposed), and the directory from a finished tensor map, with
// `extra_config`'s fields merged into config.json.
void add_hf_dense_tensor(const ModelConfig& config, const Param& p, TensorMap& out);
void write_hf_dir(const ModelConfig& config, const TensorMap& tensors, const Tokenizer* tokenizer,
                  const std::string& dir, const nlohmann::json& extra_config, uint64_t max_shard_bytes = 5'000'000'000ull);

// Medusa heads in Medusa's own format, beside a base written by save_hf into the same DIR:
// DIR/medusa_lm_head.safetensors holds the state dict of Medusa's `medusa_head` module (names
// without the `medusa_head.` prefix: `<k>.<l>.linear.weight`, `<k>.<l>.linear.bias`,
// `<k>.<layers>.weight`; f32), and DIR/config.json gains MedusaConfig's fields medusa_num_heads,
// medusa_num_layers and base_model_name_or_path (`base`). Medusa's loader reads the same state
// dict from medusa_lm_head.pt: `torch.save(safetensors.torch.load_file(F), "medusa_lm_head.pt")`.
void save_medusa_hf(const MedusaHeads& heads, const std::string& dir, const std::string& base);
// Reads DIR/medusa_lm_head.safetensors into `heads` (shapes and names checked, every tensor used;
// errors name the file, the tensor and both shapes). The heads' count and layers must match
// config.json's medusa_num_heads / medusa_num_layers when those are present.
void load_medusa_hf(MedusaHeads& heads, const std::string& dir);

}  // namespace anvil
