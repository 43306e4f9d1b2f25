"""The real PEFT (0.10, on transformers 4.38 / torch 1.13, CPU, f32) as the oracle for anvil's
LoRA interop (tests/parity/peft_parity_test.cpp).

  peft_ref.py load BASE_HF ADAPTER_DIR IDS OUT
      PeftModel.from_pretrained(AutoModelForCausalLM(BASE_HF), ADAPTER_DIR) -> logits of IDS["ids"]
      into OUT["logits"] (ANVT files, tests/parity/tensor_file.py).
  peft_ref.py save BASE_HF ADAPTER_DIR R ALPHA MODULES SEED IDS OUT
      get_peft_model(base, LoraConfig(r=R, lora_alpha=ALPHA, target_modules=MODULES.split(","))),
      every lora_A and lora_B set to N(0, 0.05) draws of torch.manual_seed(SEED) (B non-zero, so the
      adapter changes the outputs), save_pretrained(ADAPTER_DIR) and its logits into OUT["logits"].
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tensor_file  # noqa: E402


def logits(model, ids_path):
    ids = torch.from_numpy(tensor_file.read(ids_path)["ids"].astype("int64"))
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits.float().numpy()


def main():
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    mode, base_dir, adapter_dir = sys.argv[1:4]
    ids_path, out_path = sys.argv[-2:]
    base = AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32)
    if mode == "load":
        model = PeftModel.from_pretrained(base, adapter_dir)
    elif mode == "save":
        r, alpha, modules, seed = int(sys.argv[4]), float(sys.argv[5]), sys.argv[6].split(","), int(sys.argv[7])
        model = get_peft_model(base, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=modules,
                                                task_type="CAUSAL_LM"))
        torch.manual_seed(seed)
        with torch.no_grad():
            for name, p in sorted(model.named_parameters()):
                if "lora_A" in name or "lora_B" in name:
                    p.normal_(0.0, 0.05)
        # save_pretrained updates DIR/README.md, or makes one from a Jinja template (Jinja2 is not
        # among the pins): start from an empty card.
        os.makedirs(adapter_dir, exist_ok=True)
        with open(os.path.join(adapter_dir, "README.md"), "w") as f:
            f.write("---\n---\n")
        model.save_pretrained(adapter_dir)
    else:
        raise SystemExit(f"unknown mode {mode}")
    tensor_file.write(out_path, {"logits": logits(model, ids_path)})


if __name__ == "__main__":
    main()
