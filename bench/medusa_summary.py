"""Summarises bench/run_medusa_bench.sh: per Medusa model, temperature and acceptance mode the
median over repeated runs of tau (tokens per base forward, the root included), the acceptance
per head, Medusa and plain tokens/s (same run) and the speedup; the same for the speculative
drafters (`anvil eval spec`, gamma 4); a table of training cost (wall time, trainable params);
the backbone's validation loss before and after Medusa-2.
usage: medusa_summary.py OUT_DIR MODEL... -- DRAFTER..."""
import json
import os
import re
import statistics
import sys

out = sys.argv[1]
rest = sys.argv[2:]
split = rest.index("--") if "--" in rest else len(rest)
models, drafters = rest[:split], rest[split + 1:]
med = lambda xs: statistics.median(xs)


def runs(pattern):
    found, r = [], 1
    while os.path.exists(os.path.join(out, pattern % r)):
        found.append(json.load(open(os.path.join(out, pattern % r))))
        r += 1
    return found


def trainable(name):
    log = open(os.path.join(out, name + ".log")).read()
    m = re.search(r"([\d.]+)M params \(([\d.]+)M trainable\)", log)
    return float(m.group(2)) if m else float("nan")


def seconds(name):
    path = os.path.join(out, name + ".seconds")
    return int(open(path).read()) if os.path.exists(path) else float("nan")


print("tau = tokens committed per base forward (the root / bonus token included); medians over runs")
print(f"{'model':<14}{'T':>4}{'mode':>10}{'nodes':>7}{'tau':>7}  {'acceptance per head':<30}{'tok/s':>8}"
      f"{'plain':>8}{'speedup':>9}{'same@T0':>9}")
best = {}
for m in models:
    for mode in ("typical", "lossless"):
        reports = runs(f"eval_{m}_{mode}_%d.json")
        if not reports:
            continue
        cases = {}
        for rep in reports:
            for c in rep["cases"]:
                key = (c["temperature"], "greedy" if c["temperature"] == 0 else c["mode"])
                cases.setdefault(key, []).append(c)
        for (t, mo), cs in sorted(cases.items()):
            if t == 0 and mode == "lossless":
                continue
            heads = " ".join(f"{med([c['acceptance_per_head'][k] for c in cs]):.2f}"
                             for k in range(len(cs[0]["acceptance_per_head"])))
            same = all(c["same_tokens_as_plain"] for c in cs) if t == 0 else "-"
            sp = med([c["speedup"] for c in cs])
            best[(m, t, mo)] = (med([c["tau"] for c in cs]), sp)
            print(f"{m:<14}{t:>4g}{mo:>10}{cs[0]['tree_nodes']:>7}{med([c['tau'] for c in cs]):>7.3f}  {heads:<30}"
                  f"{med([c['tokens_per_second'] for c in cs]):>8.1f}{med([c['plain_tokens_per_second'] for c in cs]):>8.1f}"
                  f"{sp:>8.2f}x{str(same):>9}")
spec = {}
if drafters:
    print(f"\nspeculative drafters (gamma 4), medians over runs")
    print(f"{'drafter':<14}{'T':>4}{'tau':>7}{'accept':>8}{'tok/s':>8}{'plain':>8}{'speedup':>9}")
    for d in drafters:
        cases = {}
        for rep in runs(f"spec_{d}_%d.json"):
            for c in rep["cases"]:
                cases.setdefault(c["temperature"], []).append(c)
        for t, cs in sorted(cases.items()):
            spec[(d, t)] = (med([c["tau"] for c in cs]), med([c["speedup"] for c in cs]))
            print(f"{d:<14}{t:>4g}{med([c['tau'] for c in cs]):>7.3f}{med([c['acceptance_rate'] for c in cs]):>8.3f}"
                  f"{med([c['tokens_per_second'] for c in cs]):>8.1f}{med([c['plain_tokens_per_second'] for c in cs]):>8.1f}"
                  f"{med([c['speedup'] for c in cs]):>8.2f}x")
print("\ncomparison: tau and speedup at T = 0 (greedy) and T = 1 (lossless), training wall time, trainable params")
print(f"{'method':<14}{'tau T0':>8}{'x T0':>7}{'tau T1':>8}{'x T1':>7}{'train s':>9}{'trainable M':>13}")
for m in models:
    t0 = best.get((m, 0, "greedy"), (float("nan"),) * 2)
    t1 = best.get((m, 1, "lossless"), (float("nan"),) * 2)
    print(f"{m:<14}{t0[0]:>8.3f}{t0[1]:>6.2f}x{t1[0]:>8.3f}{t1[1]:>6.2f}x{seconds(m):>9}{trainable(m):>13.2f}")
for d in drafters:
    t0, t1 = spec.get((d, 0), (float("nan"),) * 2), spec.get((d, 1), (float("nan"),) * 2)
    print(f"{d:<14}{t0[0]:>8.3f}{t0[1]:>6.2f}x{t1[0]:>8.3f}{t1[1]:>6.2f}x{seconds(d):>9}{trainable(d):>13.2f}")
bb = os.path.join(out, "backbone.json")
if os.path.exists(bb):
    b = json.load(open(bb))
    print(f"\nbackbone validation loss on the corpus: before {b['before']:.4f}, after Medusa-2 {b['after']:.4f} "
          f"({100 * (b['after'] - b['before']) / b['before']:+.2f}%)")
