"""Plain greedy decoding with transformers' generate() (KV cache on) on an exported target: the
tokens/s bench/run_spec_bench.sh sets beside anvil's own plain KV-cached decoding of the same
model, prompts and thread count, so the baseline speculative decoding is measured against is
itself honest. Prompts are token ids (JSON list of lists, as `anvil eval spec --json` records them).
usage: hf_decode_baseline.py HF_DIR PROMPTS_JSON MAX_NEW_TOKENS THREADS RUNS"""
import json
import statistics
import sys
import time

import torch
import transformers

hf_dir, prompts_path, max_new, threads, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
prompts = json.load(open(prompts_path))
rates = []
for _ in range(runs):
    tokens, seconds = 0, 0.0
    for p in prompts:
        ids = torch.tensor([p], dtype=torch.long)
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=max_new, min_new_tokens=max_new, do_sample=False, use_cache=True,
                                 pad_token_id=0)
        seconds += time.perf_counter() - start
        tokens += out.shape[1] - len(p)
    rates.append(tokens / seconds)
print(json.dumps({"transformers": transformers.__version__, "torch": torch.__version__, "threads": threads,
                  "tokens_per_second_runs": rates, "tokens_per_second_median": statistics.median(rates)}))
