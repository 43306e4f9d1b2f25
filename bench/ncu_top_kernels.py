"""Top kernels by GPU time from an Nsight Compute CSV (bench/run_gpu_bench.sh):
ncu --metrics gpu__time_duration.sum --csv --print-units base --log-file FILE ...

usage: ncu_top_kernels.py FILE.csv [N]
Sums each kernel name's durations over all its launches and prints the N largest with their
share of the total, one per line.
"""
import csv
import sys


def main(path, n):
    with open(path, newline="") as f:
        lines = [line for line in f if not line.startswith("==")]  # ncu's own ==PROF== messages
    start = next((i for i, line in enumerate(lines) if line.startswith('"ID"')), None)
    if start is None:
        raise SystemExit(f"ncu_top_kernels: no CSV header in {path} (did ncu profile anything?)")
    totals, launches = {}, {}
    for row in csv.DictReader(lines[start:]):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        ns = float(row["Metric Value"].replace(",", ""))
        unit = row.get("Metric Unit", "nsecond")
        ns *= {"nsecond": 1, "usecond": 1e3, "msecond": 1e6, "second": 1e9}.get(unit, 1)
        name = row["Kernel Name"]
        totals[name] = totals.get(name, 0.0) + ns
        launches[name] = launches.get(name, 0) + 1
    total = sum(totals.values())
    print(f"{sum(launches.values())} kernel launches, {len(totals)} distinct kernels, {total / 1e6:.2f} ms of GPU time")
    for name, ns in sorted(totals.items(), key=lambda kv: -kv[1])[:n]:
        print(f"  {100 * ns / max(total, 1e-9):5.1f}%  {ns / 1e6:8.2f} ms  {launches[name]:5d}x  {name[:110]}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3)
