"""Summarises bench/run_router_bench.sh's output directory: per router point (kind, capacity
target) the skip ratio (1 - the last validation capacity in its metrics.jsonl, when logged), the
validation loss from `anvil eval` (the same batches as the unrouted base's), prefill and decode
tokens/s against the base measured in the same router_decode_bench process, and the issue's
target (<= 1% validation-loss increase at >= 1.15x prefill tokens/s); then the early-exit
self-speculation table (medians over the runs of `anvil eval selfspec --json`). Draws skip ratio vs validation loss as a
PNG without matplotlib (zlib + the 5x7 font of trainer/plot.cpp, read from there).
usage: router_summary.py OUT_DIR PNG"""
import glob
import json
import os
import re
import struct
import sys
import zlib

out, png_path = sys.argv[1], sys.argv[2]


def val_loss(name):
    """The validation loss `anvil eval` printed for point `name` (eval_<name>.txt), or None."""
    path = os.path.join(out, f"eval_{name}.txt")
    if not os.path.exists(path):
        return None
    m = re.search(r"validation loss ([0-9.]+)", open(path).read())
    return float(m.group(1)) if m else None


def skip_ratio(name):
    """1 - the capacity `anvil eval --routers` printed, else the run's last validation (else
    training) capacity in metrics.jsonl, or None."""
    eval_out = os.path.join(out, f"eval_{name}.txt")
    if os.path.exists(eval_out):
        m = re.search(r"capacity[ =:]+([0-9.]+)", open(eval_out).read())
        if m:
            return 1.0 - float(m.group(1))
    path = os.path.join(out, name, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    val = train = None
    for line in open(path):
        try:
            j = json.loads(line)
        except ValueError:
            continue
        for key in ("val_capacity", "capacity"):
            if key in j:
                if key == "val_capacity":
                    val = j[key]
                else:
                    train = j[key]
        for key, v in j.items():  # a router that logs its skip share directly (Dr.LLM)
            if "skip_ratio" in key and isinstance(v, (int, float)):
                return v
    c = val if val is not None else train
    return None if c is None else 1.0 - c


decode = {}  # run directory name -> row of router_decode_bench's JSON
base_decode = []
for path in sorted(glob.glob(os.path.join(out, "decode_*.json"))):
    for row in json.load(open(path))["models"]:
        if row["base"]:
            base_decode.append(row)
        else:
            decode[os.path.basename(os.path.normpath(row["path"]))] = row

points = []  # (kind, capacity target label, name)
for line in open(os.path.join(out, "points.tsv")) if os.path.exists(os.path.join(out, "points.tsv")) else []:
    kind, target, name = line.rstrip("\n").split("\t")
    points.append((kind, target, name))

base = val_loss("base")
print(f"unrouted base: validation loss {base if base is not None else 'n/a'}"
      + (f", prefill {base_decode[0]['prefill_tokens_per_second']:.1f} tok/s, decode "
         f"{base_decode[0]['decode_tokens_per_second']:.1f} tok/s (first decode run)" if base_decode else ""))
print("skip = 1 - capacity (share of router units skipped, validation); dloss = validation loss change vs the base; "
      "x = tokens/s over the base's in the same process; greedy= = share of greedy tokens equal to the base's")
print(f"{'kind':<22}{'target':>8}{'skip':>7}{'val loss':>10}{'dloss':>9}{'prefill t/s':>13}{'x':>7}"
      f"{'decode t/s':>12}{'x':>7}{'greedy=':>9}")
series = {}
best = {}
fmt = lambda v, f: (f % v) if v is not None else "n/a"
for kind, target, name in points:
    loss, skip, d = val_loss(name), skip_ratio(name), decode.get(name)
    dloss = (loss - base) / base if loss is not None and base else None
    print(f"{kind:<22}{target:>8}{fmt(skip, '%.3f'):>7}{fmt(loss, '%.4f'):>10}"
          f"{fmt(None if dloss is None else 100 * dloss, '%+.2f%%'):>9}"
          f"{fmt(d and d['prefill_tokens_per_second'], '%.1f'):>13}{fmt(d and d['prefill_speedup'], '%.2f'):>7}"
          f"{fmt(d and d['decode_tokens_per_second'], '%.1f'):>12}{fmt(d and d['decode_speedup'], '%.2f'):>7}"
          f"{fmt(d and d['greedy_agreement_with_base'], '%.3f'):>9}")
    if skip is not None and loss is not None:
        series.setdefault(kind, []).append((skip, loss))
    if d and dloss is not None and dloss <= 0.01:
        if kind not in best or d["prefill_speedup"] > best[kind][1]:
            best[kind] = (target, d["prefill_speedup"], dloss)
print("\nissue target: <= 1% validation-loss increase at >= 1.15x prefill tokens/s")
for kind in sorted({p[0] for p in points}):
    if kind in best:
        t, x, dl = best[kind]
        print(f"  {kind:<22} best within 1%: target {t}, prefill {x:.2f}x at {100 * dl:+.2f}% loss -> "
              f"{'met' if x >= 1.15 else 'not met'}")
    else:
        print(f"  {kind:<22} no point within 1% loss with a decode measurement")

spec_reports = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, "selfspec_*.json")))]
if spec_reports:
    import statistics
    report = spec_reports[0]
    cells = {}
    for r in spec_reports:
        for c in r["cases"]:
            cells.setdefault((c["exit_layer"], c["gamma"], c["temperature"]), []).append(c)
    print(f"\nearly-exit self-speculation on the base ({report['num_layers']} layers; drafter = its first E layers + "
          f"final norm + head, sharing the KV cache): {report['prompts']} prompts, {report['max_new_tokens']} new "
          f"tokens, batch {report['batch_size']}, {report['threads']} threads; medians over {len(spec_reports)} runs "
          f"(seeds 1..{len(spec_reports)})")
    print("tau = tokens committed per target forward (bonus included); speedup = self-spec tokens/s over plain "
          "decoding's in the same run (the median of the per-run ratios)")
    print(f"{'E':>3}{'gamma':>6}{'T':>5}{'tau':>7}{'accept':>8}{'spec tok/s':>12}{'plain tok/s':>13}{'speedup':>9}"
          f"{'same@T0':>9}")
    med = lambda cs, k: statistics.median(c[k] for c in cs)
    for (e, gamma, t), cs in sorted(cells.items()):
        same = str(all(c["same_tokens_as_plain"] for c in cs)) if t == 0 else "-"
        print(f"{e:>3}{gamma:>6}{t:>5g}{med(cs, 'tau'):>7.3f}{med(cs, 'acceptance_rate'):>8.3f}"
              f"{med(cs, 'tokens_per_second'):>12.1f}{med(cs, 'plain_tokens_per_second'):>13.1f}"
              f"{med(cs, 'speedup'):>8.2f}x{same:>9}")

# ---- the figure: skip ratio (x) vs validation loss (y), one colour per router kind ----
font = {}
plot_cpp = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "trainer", "plot.cpp")
for ch, rows in re.findall(r"\{'(.)',\s*\{([^}]*)\}\}", open(plot_cpp).read()):
    font[ch] = [int(v, 0) for v in rows.split(",")]
W, H, S = 1100, 600, 2  # pixels, font scale
img = bytearray(b"\xff" * (W * H * 3))


def put(x, y, c):
    if 0 <= x < W and 0 <= y < H:
        img[3 * (y * W + x):3 * (y * W + x) + 3] = bytes(((c >> 16) & 255, (c >> 8) & 255, c & 255))


def text(x, y, s, c=0x333333):
    for ch in s.lower():
        for r, bits in enumerate(font.get(ch, [0] * 7)):
            for col in range(5):
                if bits >> (4 - col) & 1:
                    for a in range(S):
                        for b in range(S):
                            put(x + col * S + a, y + r * S + b, c)
        x += 6 * S


def line(x0, y0, x1, y1, c, thick=2):
    n = max(abs(x1 - x0), abs(y1 - y0), 1)
    for i in range(n + 1):
        x, y = round(x0 + (x1 - x0) * i / n), round(y0 + (y1 - y0) * i / n)
        for a in range(thick):
            for b in range(thick):
                put(x + a - thick // 2, y + b - thick // 2, c)


colors = [0x1F77B4, 0xFF7F0E, 0x2CA02C, 0xD62728, 0x9467BD, 0x8C564B]
left, right, top, bottom = 120, W - 320, 50, H - 60
pts = [p for s in series.values() for p in s] + ([(0.0, base), (0.0, base * 1.01)] if base is not None else [])
text(left, 14, "validation loss vs skip ratio of each router point (dashed: the unrouted base)")
if pts:
    xmin, xmax = 0.0, max(0.05, max(p[0] for p in pts) * 1.05)
    ymin, ymax = min(p[1] for p in pts), max(p[1] for p in pts)
    pad = max(1e-3, 0.05 * (ymax - ymin))
    ymin, ymax = ymin - pad, ymax + pad
    px = lambda x: left + round((x - xmin) / (xmax - xmin) * (right - left))
    py = lambda y: bottom - round((y - ymin) / (ymax - ymin) * (bottom - top))
    for k in range(5):
        xv, yv = xmin + (xmax - xmin) * k / 4, ymin + (ymax - ymin) * k / 4
        line(left, py(yv), right, py(yv), 0xE6E6E6, 1)
        line(px(xv), top, px(xv), bottom, 0xE6E6E6, 1)
        text(left - 8 - 12 * len(f"{yv:.4f}"), py(yv) - 7, f"{yv:.4f}")
        text(px(xv) - 12 * len(f"{xv:.2f}") // 2, bottom + 8, f"{xv:.2f}")
    line(left, top, left, bottom, 0x333333, 1)
    line(left, bottom, right, bottom, 0x333333, 1)
    text(right - 12 * 10, bottom + 30, "skip ratio")
    if base is not None:  # the base's loss as a dashed line, 1% above it dotted
        for x in range(left, right, 12):
            line(x, py(base), x + 6, py(base), 0x333333, 1)
        for x in range(left, right, 6):
            put(x, py(base * 1.01), 0x999999)
    for i, (kind, s) in enumerate(sorted(series.items())):
        c = colors[i % len(colors)]
        s = sorted(s)
        for (x0, y0), (x1, y1) in zip(s, s[1:]):
            line(px(x0), py(y0), px(x1), py(y1), c)
        for x, y in s:
            for a in range(-4, 5):
                for b in range(-4, 5):
                    if a * a + b * b <= 16:
                        put(px(x) + a, py(y) + b, c)
        line(right + 20, top + 20 + 24 * i + 7, right + 40, top + 20 + 24 * i + 7, c, 4)
        text(right + 48, top + 20 + 24 * i, kind.replace("_", " "), c)
    text(right + 20, top + 20 + 24 * len(series), "- - base", 0x333333)
    text(right + 20, top + 44 + 24 * len(series), ".... base +1%", 0x999999)
else:
    text(left + 20, H // 2, "no data")


def chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


raw = b"".join(b"\x00" + bytes(img[y * W * 3:(y + 1) * W * 3]) for y in range(H))
with open(png_path, "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
print(f"\nwrote {png_path}")
