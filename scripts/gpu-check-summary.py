#!/usr/bin/env python3
"""The one-page result of `bash scripts/gpu-check run`, from the files its
steps left in the results folder (argv[1]); exits 1 when a check failed.

Checks (each with the figure it rests on):
  kernels:   the NVRTC-built kernels match the Rust reference (|diff| <= 1)
  pixels:    NVDEC's frames equal libavcodec's and every GPU rendition's luma
             PSNR against the CPU rendition is over the gate, for a ladder
             (one launch for all renditions) and for one rendition alone
  memcheck:  compute-sanitizer found no error
  steps:     no step failed or ran out of time
Figures reported against their targets (not pass/fail: they are the
benchmark): kernel bandwidth vs a device-to-device copy (>= 85 %), ladder
vs decode-only fps (>= 90 % where NVENC exists; without NVENC libx264
encodes and bounds the ladder, so the CPU's ladder speed is shown beside
it), GPU vs CPU ladder speed, the one-launch ladder stage vs scaling in
each rendition's thread, host CPU seconds per second of one stream.
"""
import json
import os
import re
import sys

results = sys.argv[1]


def load(name):
    try:
        with open(os.path.join(results, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def text(name):
    try:
        with open(os.path.join(results, name), errors="replace") as f:
            return f.read()
    except OSError:
        return None


steps = {}
try:
    with open(os.path.join(results, "steps.jsonl")) as f:
        for line in f:
            if line.strip():
                s = json.loads(line)
                steps[s["step"]] = s
except OSError:
    pass

summary = {"steps": steps, "checks": {}, "figures": {}}
checks, figures = summary["checks"], summary["figures"]
checks["steps"] = bool(steps) and all(s["exit"] == 0 for s in steps.values())

kernels = load("gpu-kernels.json")
if kernels:
    checks["kernels"] = bool(kernels.get("accuracy_ok"))
    figures["kernels"] = {
        "device": kernels.get("device"),
        "image": kernels.get("kernels", {}).get("image"),
        "arch": kernels.get("kernels", {}).get("arch"),
        "max_abs_diff": kernels.get("max_abs_diff"),
        "copy_bytes_per_second": kernels.get("copy", {}).get("bytes_per_second"),
        "fraction_of_copy_bandwidth": {
            "%s/%s" % (r["format"], r["filter"]): r["speed"]["fraction_of_copy_bandwidth"]
            for r in kernels.get("results", [])
        },
        "target_fraction": 0.85,
    }
    fractions = figures["kernels"]["fraction_of_copy_bandwidth"].values()
    figures["kernels"]["target_met"] = bool(fractions) and min(fractions) >= 0.85
else:
    checks["kernels"] = False

# The ladder (the engine's ladder stage) and one rendition (the
# per-rendition scaler): both must be there and pass.
figures["pixels"] = {}
checks["pixels"] = True
for name, path in (("ladder", "compare-backends.json"), ("single", "compare-single.json")):
    compare = load(path)
    if not compare:
        checks["pixels"] = False
        continue
    checks["pixels"] = checks["pixels"] and not compare.get("failures")
    figures["pixels"][name] = {
        "decode": {p: compare["decode"][p] for p in ("y", "u", "v")},
        "decoded_frames": compare["decode"]["frames"],
        "rendition_luma_psnr_db": {
            r["profile"]: r["y"]["psnr_db"] for r in compare.get("renditions", [])
        },
        "min_luma_psnr_db": compare.get("min_luma_psnr_db"),
        "failures": compare.get("failures"),
    }

dc, tc = load("decode-cpu.json"), load("transcode-cpu.json")
dg, tg = load("decode-nvidia.json"), load("transcode-nvidia.json")
speed = {}
if dg and tg:
    speed["nvidia_decode_only_fps"] = dg["median_fps"]
    speed["nvidia_ladder_fps"] = tg["median_fps"]
    speed["ladder_vs_decode_only"] = tg["median_fps"] / dg["median_fps"]
    nvenc = any((g or {}).get("nvenc_hardware") for g in (tg.get("gpus") or []))
    speed["nvenc"] = nvenc
    speed["ladder_vs_decode_only_target"] = 0.90 if nvenc else None
    if not nvenc and tc:
        # Without NVENC the renditions are encoded by libx264: the ladder
        # cannot beat the CPU's encode speed, shown here as the bound.
        speed["cpu_encode_bound_fps"] = tc["median_fps"]
# The engine's one-launch ladder against each rendition scaling on its own.
pr = load("transcode-nvidia-per-rendition.json")
if tg and pr:
    speed["nvidia_per_rendition_scaling_fps"] = pr["median_fps"]
    speed["ladder_stage_vs_per_rendition"] = tg["median_fps"] / pr["median_fps"]
if dc and tc:
    speed["cpu_decode_only_fps"] = dc["median_fps"]
    speed["cpu_ladder_fps"] = tc["median_fps"]
if tg and tc:
    speed["gpu_vs_cpu_ladder_speed"] = tc["median_seconds"] / tg["median_seconds"]
# Host CPU per stream: the single-stream GPU transcode's CPU seconds per
# wall second (spinning waits would show as a whole core here).
for name in ("decode-nvidia", "transcode-nvidia", "transcode-cpu"):
    if name in steps:
        speed["host_cpu_per_stream_" + name.replace("-", "_")] = steps[name]["cpu_per_wall"]
bench = load("bench-nvidia/report.json")
if bench:
    cores = (bench.get("hardware") or {}).get("cpu_cores") or os.cpu_count()
    speed["bench_levels"] = [
        {
            "concurrency": level["concurrency"],
            "aggregate_realtime_ratio": level["aggregate_realtime_ratio"],
            "cpu_utilisation": level.get("cpu_utilisation"),
            "host_cores_per_stream": (level["cpu_utilisation"] * cores / level["concurrency"])
            if level.get("cpu_utilisation") is not None and cores
            else None,
            "gpu_utilisation": level.get("gpu_utilisation"),
        }
        for level in bench.get("video", [])
    ]
figures["speed"] = speed

memcheck = {}
for name in ("memcheck-kernels.txt", "memcheck-transcode.txt"):
    out = text(name)
    if out is not None:
        found = re.search(r"ERROR SUMMARY: (\d+) error", out)
        memcheck[name[:-4]] = int(found.group(1)) if found else None
if memcheck:
    checks["memcheck"] = all(v == 0 for v in memcheck.values())
    figures["memcheck_errors"] = memcheck

summary["ok"] = all(checks.values())
print(json.dumps(summary, indent=2))
sys.exit(0 if summary["ok"] else 1)
