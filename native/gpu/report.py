#!/usr/bin/env python3
"""Markdown tables from bench_gpu.py's JSON files (the docs/perf/gpu-* pages are made with it).

  python3 native/gpu/report.py bench_gemm_prebuilt.json bench_attention_prebuilt.json

Times are GPU times per call from torch.profiler (`*_device_seconds`: kernels and copies), ours and the
torch peers' alike; where a peer's profiler time is missing (older JSON) its CUDA-event time is shown,
which includes the host's dispatch gaps for short kernels. Percentages of copy bandwidth use the copy measured in the same run
(bytes read + written per second, peers.copy_bandwidth), so "100 %" means as fast as a device-to-device
copy of the same byte count would read.
"""
import json
import sys


def us(s):
    return f"{s * 1e6:.1f}" if s else "-"


def gemm_table(d, lines):
    bw = d.get("peers", {}).get("copy_bytes_per_s")
    lines += ["| K x N | M | INT4 (us) | dense f16, ours (us) | torch fp16 (us) | INT4 vs torch | INT4 weight bytes / copy bw |",
              "|---|---|---|---|---|---|---|"]
    for r in d.get("gemm_int4", []):
        if "error" in r:
            lines.append(f"| {r['k']} x {r['n']} | - | error: {r['error'][:80]} | | | | |")
            continue
        t = r.get("int4_device_seconds")
        tt = r.get("torch_fp16_device_seconds") or r.get("torch_fp16_seconds")
        pct = f"{r['k'] * r['n'] / 2 / t / bw * 100:.0f} %" if t and bw else "-"
        ratio = f"{tt / t:.2f}x" if t and tt else "-"
        lines.append(f"| {r['k']} x {r['n']} | {r['m']} | {us(t)} | {us(r.get('dense_device_seconds'))} | {us(tt)} | "
                     f"{ratio} | {pct} |")


def attention_table(d, lines):
    bw = d.get("peers", {}).get("copy_bytes_per_s")
    lines += ["| format | batch | context | ours, auto splits (us) | ours, no split (us) | torch SDPA f16 (us) | "
              "vs SDPA | vs our f16 | KV bytes / copy bw |",
              "|---|---|---|---|---|---|---|---|---|"]
    f16 = {(r["batch"], r["context"]): r.get("auto_device_seconds") for r in d.get("decode_attention", [])
           if r.get("format") == "f16" and "error" not in r}
    for r in d.get("decode_attention", []):
        if "error" in r:
            lines.append(f"| {r['format']} | {r['batch']} | {r['context']} | not run: {r['error'][:70]} | | | | | |")
            continue
        t = r.get("auto_device_seconds")
        sd = r.get("torch_sdpa_device_seconds") or r.get("torch_sdpa_seconds")
        base = f16.get((r["batch"], r["context"]))
        pct = f"{r['auto_device_kv_bytes_per_s'] / bw * 100:.0f} %" if bw and r.get("auto_device_kv_bytes_per_s") else "-"
        lines.append(f"| {r['format']} | {r['batch']} | {r['context']} | {us(t)} | {us(r.get('no_split_device_seconds'))} | "
                     f"{us(sd)} | {f'{sd / t:.2f}x' if sd and t else '-'} | "
                     f"{f'{base / t:.2f}x' if base and t and r['format'] != 'f16' else '-'} | {pct} |")
    sweep = [r for r in d.get("decode_attention", []) if any(k.startswith("splits_") for k in r)]
    for r in sweep:
        lines += ["", f"Forced split counts, {r['format']} batch {r['batch']} x {r['context']} (GPU us per call; "
                  "split kernel + merge kernel):", ""]
        for k in sorted(k for k in r if k.endswith("_device_seconds")):
            label = k[: -len("_device_seconds")]
            kern = r.get(f"{label}_device_kernels") or {}
            short = {}
            for n, v in kern.items():  # profiler names: keep the kernel's own name
                for known in ("mma_kernel", "split_kernel", "merge_kernel", "Memcpy"):
                    if known in n:
                        n = known
                short[n] = short.get(n, 0.0) + v
            parts = ", ".join(f"{n} {v * 1e6:.1f}" for n, v in sorted(short.items()))
            lines.append(f"- {label}: {us(r[k])} ({parts})")


def main():
    lines = []
    for path in sys.argv[1:]:
        d = json.load(open(path))
        dev = d.get("device", {})
        bw = d.get("peers", {}).get("copy_bytes_per_s")
        lines += [f"### {path}", "", f"Device: {dev.get('name', '?')} ({dev.get('sm_count', '?')} SMs), copy bandwidth "
                  f"measured in the same run: {bw / 1e12:.2f} TB/s (read + write)." if bw else "", ""]
        if "gemm_int4" in d:
            gemm_table(d, lines)
        if "decode_attention" in d:
            attention_table(d, lines)
        if d.get("skipped"):
            lines += ["", f"Skipped (time budget): {', '.join(d['skipped'])}"]
        lines.append("")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
