#!/usr/bin/env python3
"""LlmNative kernel benchmarks through the C ABI (ctypes), side by side with the torch peers.

Runs our INT4 GEMM (vs our dense GEMM) and decode attention (auto splits vs no split) at the issue
shapes, then, in the same process, the peers from peers.py (torch fp16 matmul, torch SDPA, copy
bandwidth) when torch and a peers.py path are available. Prints one JSON object.

  python3 bench_gpu.py --lib build/gpu/lib/libllmnative.so [--backend cuda|cpu] [--quick]
                       [--peers .gpu/peers.py] > bench.json

`--backend cpu --quick` is a smoke test of the harness itself on a machine without a GPU.
Data comes from os.urandom-derived tiles, so the harness needs neither numpy nor torch itself.

Timing. A decode-size kernel runs for a few microseconds on an H200, less than one ctypes call plus our
host-side validation, so the wall clock of back-to-back calls measures the host. When torch is present,
our calls are also run under torch.profiler (CUPTI records every kernel and copy of the process, ours
included) and `*_device_seconds` = GPU time of our kernels and copies per call; ratios against the torch
peers (CUDA-event times per call) use those. `*_seconds` stays the wall time per call.
Peers run right after our kernel at the same shape (side by side), and `--budget` bounds the whole run:
what did not fit is listed under "skipped", never silently dropped.
"""
import argparse
import ctypes as C
import json
import math
import os
import struct
import sys
import time

# ---- ABI mirror (only what the benchmarks use; layout must follow llmnative.h) -------------------

class CudaInfo(C.Structure):
    _fields_ = [("compiled", C.c_int32), ("available", C.c_int32), ("device_count", C.c_int32),
                ("driver_version", C.c_int32), ("runtime_version", C.c_int32), ("unavailable_reason", C.c_char * 256)]


class CudaDeviceInfo(C.Structure):
    _fields_ = [("index", C.c_int32), ("compute_major", C.c_int32), ("compute_minor", C.c_int32),
                ("sm_count", C.c_int32), ("total_memory_bytes", C.c_int64), ("free_memory_bytes", C.c_int64),
                ("l2_cache_bytes", C.c_int32), ("memory_bus_width_bits", C.c_int32), ("memory_clock_khz", C.c_int32),
                ("reserved", C.c_int32), ("name", C.c_char * 256)]


class GptqTensors(C.Structure):
    _fields_ = [("k", C.c_int64), ("n", C.c_int64), ("group_size", C.c_int32), ("symmetric", C.c_int32),
                ("format", C.c_int32), ("scales_dtype", C.c_int32), ("qweight", C.c_void_p), ("qzeros", C.c_void_p),
                ("scales", C.c_void_p), ("g_idx", C.c_void_p)]


class KvCacheDesc(C.Structure):
    _fields_ = [("num_layers", C.c_int32), ("num_kv_heads", C.c_int32), ("head_dim", C.c_int32),
                ("block_size", C.c_int32), ("k_format", C.c_int32), ("v_format", C.c_int32),
                ("value_group_size", C.c_int32), ("max_batch", C.c_int32), ("capacity_tokens", C.c_int64),
                ("capacity_bytes", C.c_int64)]


class AttentionParams(C.Structure):
    _fields_ = [("layer", C.c_int32), ("num_q_heads", C.c_int32), ("q_len", C.c_int32), ("num_splits", C.c_int32),
                ("scale", C.c_float), ("softcap", C.c_float), ("window", C.c_int32), ("flags", C.c_int32)]


F32, F16, BF16, I32 = 0, 1, 2, 5
KV_FORMATS = {"f16": 0, "bf16": 1, "int8": 2, "fp8": 3, "int4": 4, "int2": 5}


class Lib:
    def __init__(self, path):
        self.dll = C.CDLL(path)

    def __call__(self, name, *args):
        status = getattr(self.dll, name)(*args)
        if status != 0:
            buf = C.create_string_buffer(2048)
            self.dll.llmn_get_last_error(buf, 2048, None)
            raise RuntimeError(f"{name} failed with status {status}: {buf.value.decode()}")

    def buffer(self, ctx, dtype, count, data=None):
        b = C.c_void_p()
        self("llmn_buffer_create", ctx, dtype, C.c_int64(count), 0, C.byref(b))
        if data is not None:
            self("llmn_buffer_upload", b, C.c_int64(0), data, C.c_int64(count))
        return b


def half_tile(n, scale=1.0, seed=0):
    """n fp16 values (bytes), random normal-ish, built from a 64 Ki-entry random tile."""
    rnd = os.urandom(4 * 65536)
    vals = []
    for i in range(65536):
        u1, = struct.unpack_from("<I", rnd, 4 * i)
        x = ((u1 & 0xFFFF) / 65536.0 + (u1 >> 16) / 65536.0 - 1.0) * 1.7 * scale
        vals.append(struct.pack("<e", x))
    tile = b"".join(vals)
    reps = -(-2 * n // len(tile))
    return (tile * reps)[: 2 * n]


def timed(lib, ctx, fn, reps):
    for _ in range(3):
        fn()
    lib("llmn_context_synchronize", ctx)
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    lib("llmn_context_synchronize", ctx)
    return (time.perf_counter() - t) / reps


def profiled_seconds(fn, sync, reps, breakdown=None):
    """GPU seconds per call of everything fn puts on the device (kernels + copies), from torch.profiler
    (sync() waits for the device); per-kernel shares into `breakdown` when given. Ours and the torch
    peers are timed by this one measure. None without torch / CUDA, or when nothing was recorded."""
    try:
        import torch
        from torch.profiler import profile, ProfilerActivity
        if not torch.cuda.is_available():
            return None
    except Exception:
        return None
    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                fn()
            sync()
        total_us = 0.0
        for e in prof.key_averages():
            v = getattr(e, "self_device_time_total", None)
            if v is None:
                v = getattr(e, "self_cuda_time_total", 0.0)
            v = float(v or 0.0)
            total_us += v
            if breakdown is not None and v > 0:  # per kernel / copy: where the time goes
                name = e.key
                for short in ("mma_kernel", "split_kernel", "merge_kernel", "gemm_int4_fast_kernel", "gemm_int4_reference_kernel",
                              "gather_x_kernel", "Memcpy", "Memset"):
                    if short in name:
                        name = short
                        break
                breakdown[name[:60]] = breakdown.get(name[:60], 0.0) + v * 1e-6 / reps
    except Exception as ex:  # keep the wall-clock numbers if the profiler is unusable here
        print(f"profiler failed: {ex}", file=sys.stderr)
        return None
    return total_us * 1e-6 / reps if total_us > 0 else None


def device_time(lib, ctx, fn, reps, breakdown=None):
    """GPU seconds per call of one of our calls (after one warm-up call)."""
    sync = lambda: lib("llmn_context_synchronize", ctx)
    fn()
    sync()
    return profiled_seconds(fn, sync, reps, breakdown)


def torch_device_time(fn, reps):
    """GPU seconds per call of a torch callable, by the same profiler measure as ours: CUDA-event times of
    a short torch call include the host's dispatch gaps when the kernel is shorter than the Python call,
    which would flatter us."""
    import torch
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    return profiled_seconds(fn, torch.cuda.synchronize, reps)


def torch_gemm_device(k, n, ms, l2_bytes, reps=50):
    """torch fp16 matmul GPU time per call for each m, weights rotated past L2 like peers.gemm_fp16."""
    import torch
    copies = max(2, math.ceil(3 * l2_bytes / (k * n * 2)))
    ws = [torch.randn(k, n, dtype=torch.float16, device="cuda") for _ in range(copies)]
    out = {}
    for m in ms:
        x = torch.randn(m, k, dtype=torch.float16, device="cuda")
        i = [0]

        def step():
            torch.matmul(x, ws[i[0] % copies])
            i[0] += 1
        out[m] = torch_device_time(step, reps)
    del ws
    return out


def torch_sdpa_device(b, ctx_len, hq, hkv, d, reps=30):
    import torch
    q = torch.randn(b, hq, 1, d, dtype=torch.float16, device="cuda")
    k = torch.randn(b, hkv, ctx_len, d, dtype=torch.float16, device="cuda")
    v = torch.randn(b, hkv, ctx_len, d, dtype=torch.float16, device="cuda")
    sdpa = torch.nn.functional.scaled_dot_product_attention
    try:
        sdpa(q, k, v, enable_gqa=True)
        fn = lambda: sdpa(q, k, v, enable_gqa=True)
    except TypeError:
        g = hq // hkv
        fn = lambda: sdpa(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1))
    t = torch_device_time(fn, reps)
    del q, k, v
    return t


class Budget:
    def __init__(self, seconds):
        self.end = time.monotonic() + seconds
        self.skipped = []

    def ok(self, what):
        if time.monotonic() < self.end:
            return True
        self.skipped.append(what)
        print(f"budget: skipped {what}", file=sys.stderr)
        return False


def bench_gemm(lib, ctx, backend, shapes, ms, cache_bytes, quick, peers=None, budget=None, out=None,
               save=lambda: None):
    out = [] if out is None else out
    for (k, n) in shapes:
        if budget and not budget.ok(f"gemm {k}x{n}"):
            continue
        try:
            gemm_shape(lib, ctx, backend, k, n, ms, cache_bytes, quick, peers, out, save)
        except Exception as ex:  # a failing shape is a result too; the next shape still runs
            out.append({"k": k, "n": n, "error": str(ex)})
            print(f"gemm {k}x{n} failed: {ex}", file=sys.stderr)
            save()
    return out


def gemm_shape(lib, ctx, backend, k, n, ms, cache_bytes, quick, peers, out, save):
    act_dtype = F16
    w_int4_bytes = k * n // 2
    copies = max(2, math.ceil(3 * cache_bytes / w_int4_bytes))
    dense_copies = max(2, math.ceil(3 * cache_bytes / (k * n * 2)))
    qweight = os.urandom(k * n // 2)
    scales = half_tile((k // 128) * n, 0.01)
    weights = []
    for _ in range(copies):
        t = GptqTensors(k, n, 128, 1, 0, F16, C.cast(C.c_char_p(qweight), C.c_void_p).value, None,
                        C.cast(C.c_char_p(scales), C.c_void_p).value, None)
        w = C.c_void_p()
        lib("llmn_int4_weight_import_gptq", ctx, C.byref(t), C.byref(w))
        weights.append(w)
    dense_data = half_tile(k * n, 0.02)
    dense = [lib.buffer(ctx, act_dtype, k * n, dense_data) for _ in range(dense_copies)]
    for m in ms:
        x = lib.buffer(ctx, act_dtype, m * k, half_tile(m * k))
        y = lib.buffer(ctx, act_dtype, m * n)
        i = [0]

        def run_int4():
            lib("llmn_gemm_int4", ctx, x, weights[i[0] % copies], None, y, C.c_int64(m))
            i[0] += 1

        def run_dense():
            lib("llmn_gemm_dense", ctx, x, dense[i[0] % dense_copies], None, y, C.c_int64(m), C.c_int64(k),
                C.c_int64(n))
            i[0] += 1

        reps = 3 if quick else (50 if backend == "cuda" else 5)
        t4 = timed(lib, ctx, run_int4, reps)
        td = timed(lib, ctx, run_dense, reps)
        row = {"k": k, "n": n, "m": m, "int4_seconds": t4, "dense_seconds": td,
               "int4_weight_bytes_per_s": w_int4_bytes / t4, "speedup_vs_dense": td / t4,
               "rotated_int4_copies": copies, "rotated_dense_copies": dense_copies}
        if backend == "cuda":
            kernels = {}
            d4 = device_time(lib, ctx, run_int4, reps, kernels)
            row["int4_device_kernels"] = kernels
            dd = device_time(lib, ctx, run_dense, reps)
            row["int4_device_seconds"], row["dense_device_seconds"] = d4, dd
            if d4:
                row["int4_device_weight_bytes_per_s"] = w_int4_bytes / d4
            if d4 and dd:
                row["device_speedup_vs_dense"] = dd / d4
        out.append(row)
        save()
        for b in (x, y):
            lib("llmn_buffer_destroy", b)
        print(f"gemm k={k} n={n} m={m}: int4 {t4*1e6:.1f} us, dense {td*1e6:.1f} us", file=sys.stderr)
    for w in weights:
        lib("llmn_int4_weight_destroy", w)
    for b in dense:
        lib("llmn_buffer_destroy", b)
    if peers is not None:  # torch fp16 matmul at the same shape, right after ours
        mod, dev, run, l2 = peers
        try:
            ref = {(r["k"], r["n"], r["m"]): r for r in mod.gemm_fp16(dev, run, [(k, n)], ms, l2, quick)}
        except Exception as ex:
            print(f"peer gemm_fp16 {k}x{n} failed: {ex}", file=sys.stderr)
            ref = {}
        try:
            dev_ref = torch_gemm_device(k, n, ms, l2) if dev == "cuda" else {}
        except Exception as ex:
            print(f"torch gemm device time {k}x{n} failed: {ex}", file=sys.stderr)
            dev_ref = {}
        for row in out:
            r = ref.get((row["k"], row["n"], row["m"]))
            if r is None or row["k"] != k or row["n"] != n:
                continue
            row["torch_fp16_seconds"] = r["seconds"]  # CUDA events per call (peers.py)
            row["torch_fp16_device_seconds"] = dev_ref.get(row["m"])  # GPU time, same measure as ours
            ours = row.get("int4_device_seconds") or row["int4_seconds"]
            theirs = row["torch_fp16_device_seconds"] or r["seconds"]
            row["speedup_vs_torch_fp16"] = theirs / ours
        save()


def bench_attention(lib, ctx, backend, batches, contexts, fmt, quick, hq=32, hkv=8, d=128, peers=None,
                    budget=None, out=None, save=lambda: None):
    out = [] if out is None else out
    for b in batches:
        for ctx_len in contexts:
            if budget and not budget.ok(f"attention {fmt} b={b} ctx={ctx_len}"):
                continue
            try:
                attention_config(lib, ctx, backend, b, ctx_len, fmt, quick, hq, hkv, d, peers, out)
            except Exception as ex:  # recorded; the next configuration still runs
                out.append({"batch": b, "context": ctx_len, "format": fmt, "error": str(ex)})
                print(f"attention {fmt} b={b} ctx={ctx_len} failed: {ex}", file=sys.stderr)
            save()
    return out


def attention_config(lib, ctx, backend, b, ctx_len, fmt, quick, hq, hkv, d, peers, out):
    chunk = 1024
    kv_chunk = half_tile(chunk * hkv * d, 1.0)
    kv_bytes = 2 * b * hkv * ctx_len * d * 2
    if backend == "cuda" and kv_bytes > 40e9:
        return
    desc = KvCacheDesc(1, hkv, d, 16, KV_FORMATS[fmt], KV_FORMATS[fmt], 64, max(b, 1),
                       b * (ctx_len + 16) + 64, 0)
    cache = C.c_void_p()
    try:
        lib("llmn_kv_cache_create", ctx, C.byref(desc), C.byref(cache))
    except RuntimeError as e:
        out.append({"batch": b, "context": ctx_len, "format": fmt, "error": str(e)})
        return
    kbuf = lib.buffer(ctx, F16, chunk * hkv * d, kv_chunk)
    seqs = (C.c_int64 * b)()
    for s in range(b):
        sid = C.c_int64()
        lib("llmn_kv_cache_add_sequence", cache, C.byref(sid))
        seqs[s] = sid.value
        left = ctx_len
        while left > 0:
            nt = min(chunk, left)
            lib("llmn_kv_cache_append", cache, sid, 0, kbuf, kbuf, nt)
            left -= nt
    q = lib.buffer(ctx, F16, b * hq * d, half_tile(b * hq * d))
    o = lib.buffer(ctx, F16, b * hq * d)
    row = {"batch": b, "context": ctx_len, "format": fmt, "q_heads": hq, "kv_heads": hkv, "head_dim": d}
    bytes_per_token = C.c_int64()
    lib("llmn_kv_cache_bytes_per_token", C.byref(desc), C.byref(bytes_per_token))
    stored = b * ctx_len * bytes_per_token.value
    configs = [("auto", 0), ("no_split", 1)]
    if backend == "cuda" and b == 1 and ctx_len == 32768:  # where the split policy matters most
        configs += [(f"splits_{n}", n) for n in (16, 32, 64, 128, 256)]
    for label, splits in configs:
        p = AttentionParams(0, hq, 1, splits, 1.0 / math.sqrt(d), 0.0, 0, 0)
        reps = 3 if quick else (30 if backend == "cuda" else 5)
        call = lambda: lib("llmn_decode_attention", ctx, cache, seqs, b, q, None, o, C.byref(p))
        t = timed(lib, ctx, call, reps)
        row[f"{label}_seconds"] = t
        row[f"{label}_kv_bytes_per_s"] = stored / t
        if backend == "cuda":
            kernels = {}
            dt = device_time(lib, ctx, call, reps, kernels)
            row[f"{label}_device_seconds"] = dt
            row[f"{label}_device_kernels"] = kernels
            if dt:
                row[f"{label}_device_kv_bytes_per_s"] = stored / dt
    if peers is not None and fmt == "f16":  # torch SDPA on contiguous f16 KV, same shape, right after ours
        mod, dev, run, _ = peers
        try:
            r = mod.sdpa_decode(dev, run, [b], [ctx_len], hq, hkv, d, quick)
            if r:
                row["torch_sdpa_seconds"] = r[0]["seconds"]  # CUDA events per call (peers.py)
                if dev == "cuda":  # GPU time, same measure as ours
                    row["torch_sdpa_device_seconds"] = torch_sdpa_device(b, ctx_len, hq, hkv, d)
                ours = row.get("auto_device_seconds") or row["auto_seconds"]
                theirs = row.get("torch_sdpa_device_seconds") or r[0]["seconds"]
                row["speedup_vs_torch_sdpa"] = theirs / ours
        except Exception as ex:
            print(f"peer sdpa_decode b={b} ctx={ctx_len} failed: {ex}", file=sys.stderr)
    out.append(row)
    print(f"attention {fmt} b={b} ctx={ctx_len}: {row['auto_seconds']*1e6:.1f} us", file=sys.stderr)
    for buf in (kbuf, q, o):
        lib("llmn_buffer_destroy", buf)
    lib("llmn_kv_cache_destroy", cache)


def load_peers(path, backend, l2):
    if not path:
        return None
    try:
        import importlib.util
        spec = importlib.util.spec_from_file_location("peers", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    except Exception as ex:
        print(f"peers: cannot load {path}: {ex}", file=sys.stderr)
        return None
    dev = "cuda" if backend == "cuda" else "cpu"
    return (mod, dev, mod.timer(dev), l2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--backend", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--peers", help="path to peers.py (torch peers run in this same process)")
    ap.add_argument("--only", choices=["gemm", "attention", "all"], default="all")
    ap.add_argument("--formats", default="f16,int8,fp8,int4,int2", help="KV formats for attention")
    ap.add_argument("--budget", type=float, default=1e9, help="seconds; configurations past it are skipped")
    ap.add_argument("--gemm-shapes", help="GEMM K x N shapes, e.g. 4096x4096,8192x8192 (default: the four issue shapes)")
    ap.add_argument("--ms", help="GEMM row counts, comma-separated (default 1,4,16,64,256)")
    ap.add_argument("--batches", help="attention batches, comma-separated (default 1,8,32)")
    ap.add_argument("--contexts", help="attention contexts, comma-separated (default 1024,4096,32768,131072)")
    ap.add_argument("--out", help="write the JSON here instead of stdout")
    a = ap.parse_args()
    budget = Budget(a.budget)
    result = {}

    def save(final=False):  # after every configuration: a timeout or crash keeps what was measured
        if not a.out:
            return
        result["complete"] = final
        result["skipped"] = budget.skipped
        with open(a.out + ".tmp", "w") as f:
            json.dump(result, f, indent=1)
        os.replace(a.out + ".tmp", a.out)

    lib = Lib(a.lib)
    info = CudaInfo()
    lib("llmn_get_cuda_info", C.byref(info))
    result.update({"library": os.path.abspath(a.lib), "backend": a.backend,
              "cuda": {"compiled": info.compiled, "available": info.available,
                       "driver": info.driver_version, "runtime": info.runtime_version,
                       "reason": info.unavailable_reason.decode()}})
    backend = 1 if a.backend == "cuda" else 0
    cache_bytes = 32 << 20
    if backend == 1:
        dev = CudaDeviceInfo()
        lib("llmn_get_cuda_device_info", 0, C.byref(dev))
        result["device"] = {"name": dev.name.decode(), "sm_count": dev.sm_count,
                            "cc": f"{dev.compute_major}.{dev.compute_minor}", "l2_bytes": dev.l2_cache_bytes}
        cache_bytes = dev.l2_cache_bytes
    ctx = C.c_void_p()
    lib("llmn_context_create", backend, 0, C.byref(ctx))

    peers = load_peers(a.peers, a.backend, cache_bytes)
    if peers is not None:
        mod, dev_name, run, _ = peers
        try:
            result["peers"] = {"copy_bytes_per_s": mod.copy_bandwidth(dev_name, run,
                                                                      (2 << 30) if dev_name == "cuda" else (64 << 20))}
        except Exception as ex:
            print(f"peer copy_bandwidth failed: {ex}", file=sys.stderr)

    shapes = [(4096, 4096), (4096, 14336), (14336, 4096), (8192, 8192)]
    ms = [1, 4, 16, 64, 256]
    batches, contexts = [1, 8, 32], [1024, 4096, 32768, 131072]
    if a.quick:
        shapes, ms, batches, contexts = [(1024, 1024)], [1, 16], [1], [256]
    if a.gemm_shapes:
        shapes = [tuple(int(x) for x in v.split("x")) for v in a.gemm_shapes.split(",")]
    if a.ms:
        ms = [int(v) for v in a.ms.split(",")]
    if a.batches:
        batches = [int(v) for v in a.batches.split(",")]
    if a.contexts:
        contexts = [int(v) for v in a.contexts.split(",")]
    if a.only in ("gemm", "all"):
        result["gemm_int4"] = []
        bench_gemm(lib, ctx, a.backend, shapes, ms, cache_bytes, a.quick, peers, budget, result["gemm_int4"], save)
    if a.only in ("attention", "all"):
        result["decode_attention"] = []
        # priority order, every format at a shape before the next shape, so that a short budget still
        # compares the formats where the targets are (batch 1 x 32k, then 1 x 4k, then batch 8)
        order = sorted(((b, c) for b in batches for c in contexts),
                       key=lambda bc: ({1: 0, 8: 1}.get(bc[0], 2), {32768: 0, 4096: 1}.get(bc[1], 2), bc))
        for (b, c) in order:
            for fmt in [f for f in a.formats.split(",") if f]:
                bench_attention(lib, ctx, a.backend, [b], [c], fmt, a.quick, peers=peers, budget=budget,
                                out=result["decode_attention"], save=save)
    lib("llmn_context_destroy", ctx)
    result["skipped"] = budget.skipped
    if a.out:
        save(final=True)
    else:
        json.dump(result, sys.stdout, indent=1)
        print()


if __name__ == "__main__":
    main()
