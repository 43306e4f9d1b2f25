#!/usr/bin/env python3
"""The table of bench/run_qlora_bench.sh from its run logs.

usage: qlora_summary.py OUT_DIR SEED [SEED ...]

Per way (full, lora, qlora) and seed: the trainer's measured peak memory per category (params,
grads, optimizer state, activations, the step's peak), the process's max RSS, tokens/s (mean of
the logged steps after the first three) and the final validation loss; then per way the mean and
spread over seeds, and QLoRA's ratios to LoRA (the issue's targets: params <= 0.35x on the base's
share, validation loss within 2%).
"""
import json
import re
import statistics
import sys

WAYS = ["full", "lora", "qlora"]


def parse(out, way, seed):
    log = open(f"{out}/{way}-{seed}.log").read()
    peak = re.search(r"rank 0: params ([\d.]+), grads ([\d.]+), optimizer state ([\d.]+), activations ([\d.]+) "
                     r"\(step peak ([\d.]+)\)", log)
    model = re.search(r"model: \S+ ([\d.]+)M params \(([\d.]+)M trainable\)", log)
    val = re.search(r"final validation loss ([\d.]+)", log)
    rss = re.search(r"max_rss_kb (\d+)", log)
    if not (peak and val and rss):
        sys.exit(f"qlora_summary: {out}/{way}-{seed}.log has no complete run (see its end)")
    speeds = [json.loads(l)["tokens_per_s"] for l in open(f"{out}/{way}-{seed}/metrics.jsonl")
              if '"tokens_per_s"' in l][3:]
    return {
        "params": float(peak.group(1)), "grads": float(peak.group(2)), "opt": float(peak.group(3)),
        "act": float(peak.group(4)), "step_peak": float(peak.group(5)), "rss": int(rss.group(1)) / 1024,
        "trainable": float(model.group(2)) if model else float("nan"),
        "tok_s": statistics.mean(speeds) if speeds else float("nan"), "val": float(val.group(1)),
    }


def main():
    out, seeds = sys.argv[1], sys.argv[2:]
    runs = {w: [parse(out, w, s) for s in seeds] for w in WAYS}
    print("| way | seed | trainable M | params MB | grads MB | optimizer MB | activations MB | step peak MB "
          "| max RSS MB | tokens/s | val loss |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for w in WAYS:
        for s, r in zip(seeds, runs[w]):
            print(f"| {w} | {s} | {r['trainable']:.2f} | {r['params']:.1f} | {r['grads']:.1f} | {r['opt']:.1f} | "
                  f"{r['act']:.1f} | {r['step_peak']:.1f} | {r['rss']:.0f} | {r['tok_s']:.0f} | {r['val']:.4f} |")
    print()
    print("| way | val loss mean | spread (max-min) | params MB | step peak MB | max RSS MB | tokens/s |")
    print("|---|---|---|---|---|---|---|")
    mean = {}
    for w in WAYS:
        rs = runs[w]
        vals = [r["val"] for r in rs]
        mean[w] = {k: statistics.mean(r[k] for r in rs) for k in rs[0]}
        m = mean[w]
        print(f"| {w} | {m['val']:.4f} | {max(vals) - min(vals):.4f} | {m['params']:.1f} | {m['step_peak']:.1f} | "
              f"{m['rss']:.0f} | {m['tok_s']:.0f} |")
    q, l = mean["qlora"], mean["lora"]
    print()
    print(f"QLoRA / LoRA: params {q['params'] / l['params']:.3f}x (all frozen and trainable params held; the "
          f"Linear weights' own ratio is in the decode table below), step peak {q['step_peak'] / l['step_peak']:.3f}x, "
          f"max RSS {q['rss'] / l['rss']:.3f}x, tokens/s {q['tok_s'] / l['tok_s']:.3f}x")
    print(f"QLoRA validation loss vs LoRA: {100 * (q['val'] / l['val'] - 1):+.2f}% (target: within 2%); "
          f"full fine-tuning: {100 * (mean['full']['val'] / l['val'] - 1):+.2f}%")


main()
