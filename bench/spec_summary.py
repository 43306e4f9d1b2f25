"""Summarises bench/run_spec_bench.sh's `anvil eval spec --json` reports: per drafter, gamma and
temperature the median over repeated runs of tau, the acceptance rate, the drafter overhead c,
speculative and plain tokens/s and the speedup (both measured in the same run); the TempSpec
ratio tau(T=1)/tau(T=0) per drafter; and anvil's plain decoding against transformers' generate().
usage: spec_summary.py OUT_DIR   (reads OUT_DIR/eval_<drafter>_<run>.json, OUT_DIR/hf_baseline.json)"""
import collections
import glob
import json
import os
import re
import statistics
import sys

out = sys.argv[1]
rows = collections.defaultdict(list)  # (drafter, gamma, T) -> [case, ...]
for path in sorted(glob.glob(os.path.join(out, "eval_*_*.json"))):
    drafter = re.match(r"eval_(.+)_\d+\.json", os.path.basename(path)).group(1)
    report = json.load(open(path))
    for case in report["cases"]:
        rows[(drafter, case["gamma"], case["temperature"])].append(case)
med = lambda cases, key: statistics.median(c[key] for c in cases)
print("tau = tokens committed per target forward, the bonus token included; medians over %d runs" %
      max(len(v) for v in rows.values()))
print(f"{'drafter':<22}{'gamma':>6}{'T':>5}{'tau':>7}{'accept':>8}{'c':>7}{'spec tok/s':>12}{'plain tok/s':>13}"
      f"{'speedup':>9}{'same@T0':>9}")
for (drafter, gamma, t), cases in sorted(rows.items()):
    same = all(c["same_tokens_as_plain"] for c in cases) if t == 0 else "-"
    print(f"{drafter:<22}{gamma:>6}{t:>5g}{med(cases, 'tau'):>7.3f}{med(cases, 'acceptance_rate'):>8.3f}"
          f"{med(cases, 'drafter_overhead_c'):>7.3f}{med(cases, 'tokens_per_second'):>12.1f}"
          f"{med(cases, 'plain_tokens_per_second'):>13.1f}{med(cases, 'speedup'):>8.2f}x{str(same):>9}")
print("\nTempSpec: tau(T=1) / tau(T=0) per drafter and gamma")
for (drafter, gamma, t), cases in sorted(rows.items()):
    if t == 0 and (drafter, gamma, 1.0) in rows:
        print(f"  {drafter:<22} gamma {gamma}: {med(rows[(drafter, gamma, 1.0)], 'tau') / med(cases, 'tau'):.3f}")
pairs = [("standalone_onpolicy", "standalone_t1")]  # (on-policy, its off-policy twin)
for on, off in pairs:
    shared = sorted(k[1:] for k in rows if k[0] == on and (off,) + k[1:] in rows)
    if shared:
        print(f"\non-policy vs off-policy: tau of {on} minus tau of {off} (medians)")
        for gamma, t in shared:
            print(f"  gamma {gamma} T {t:g}: {med(rows[(on, gamma, t)], 'tau') - med(rows[(off, gamma, t)], 'tau'):+.3f}")
hf = os.path.join(out, "hf_baseline.json")
if os.path.exists(hf):
    theirs = json.load(open(hf))
    ours = statistics.median(c["plain_tokens_per_second"] for k, v in rows.items() if k[2] == 0 for c in v)
    print(f"\nplain greedy KV-cached decoding of the target, {theirs['threads']} threads: anvil {ours:.1f} tok/s, "
          f"transformers {theirs['transformers']} (torch {theirs['torch']}) {theirs['tokens_per_second_median']:.1f} "
          f"tok/s: ratio {ours / theirs['tokens_per_second_median']:.2f}")
