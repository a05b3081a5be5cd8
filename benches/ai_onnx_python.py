#!/usr/bin/env python3
"""The Python onnxruntime side of `cargo bench --bench ai_onnx`.

Times `InferenceSession.run` on one model with the session settings lpworker's
`OnnxModel::load` ends up with (src/ai/onnx.rs through the `ort` crate):
intra-op threads as given, onnxruntime's default graph optimisation level
(ORT_ENABLE_ALL), sequential execution, and the execution-provider selection
policy MAX_EFFICIENCY that `ort`'s `SessionBuilder::new` sets (which picks the
CPU provider on a machine without a GPU or NPU). Prints one JSON object on
stdout: the per-iteration times in ms plus their median and p90.

Example:
  .venv/bin/python benches/ai_onnx_python.py --model m.onnx --threads 2 \
      --iters 30 --shape 1x3x640x640

With --stdin the session stays loaded and each line "N" read from stdin times
N more iterations and prints one JSON line, so that the caller can alternate
short rounds with its own (the Rust bench does); a first line {"ready": true}
says the session is loaded and warmed up; EOF ends it.
"""

import argparse
import json
import sys
import time

import numpy as np
import onnxruntime as ort


def parse_shape(text):
    return tuple(int(d) for d in text.replace(",", "x").split("x") if d)


def synthetic_input(shape):
    """The same deterministic input the Rust side builds when no file is given:
    element i is ((i * 7919) % 1000) / 1000 - 0.5 (exact in float32 for the
    integers involved, computed in float64 and rounded once)."""
    n = int(np.prod(shape))
    i = np.arange(n, dtype=np.int64)
    return (((i * 7919) % 1000) / 1000.0 - 0.5).astype(np.float32).reshape(shape)


def percentile(sorted_ms, p):
    """Nearest rank, as the Rust side computes it."""
    k = max(0, min(len(sorted_ms) - 1, int(np.ceil(p * len(sorted_ms))) - 1))
    return sorted_ms[k]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2, help="intra_op_num_threads (0: onnxruntime's default)")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--shape", required=True, help="input shape, e.g. 1x3x640x640")
    ap.add_argument("--input", help="raw little-endian float32 input (default: synthetic_input)")
    ap.add_argument("--input-name", help="input tensor (default: the model's first)")
    ap.add_argument("--output-name", help="output tensor (default: the model's first)")
    ap.add_argument("--save-output", help="write the last output here as raw float32")
    ap.add_argument("--stdin", action="store_true", help="time N iterations per line 'N' on stdin (see above)")
    ap.add_argument(
        "--policy",
        choices=["max_efficiency", "none"],
        default="max_efficiency",
        help="provider selection policy; max_efficiency mirrors the ort crate, "
        "none passes providers=['CPUExecutionProvider'] instead",
    )
    ap.add_argument(
        "--opt-level",
        choices=["default", "disable", "basic", "extended", "layout", "all"],
        default="default",
        help="graph_optimization_level (default: leave onnxruntime's, as lpworker does)",
    )
    args = ap.parse_args()

    shape = parse_shape(args.shape)
    if args.input:
        x = np.fromfile(args.input, dtype="<f4")
        if x.size != int(np.prod(shape)):
            raise SystemExit(f"{args.input}: {x.size} floats, shape {shape} needs {int(np.prod(shape))}")
        x = x.reshape(shape)
    else:
        x = synthetic_input(shape)

    so = ort.SessionOptions()
    if args.threads > 0:
        so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    if args.opt_level != "default":
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "layout": ort.GraphOptimizationLevel.ORT_ENABLE_LAYOUT,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[args.opt_level]
    if args.policy == "max_efficiency":
        so.set_provider_selection_policy(ort.OrtExecutionProviderDevicePolicy.MAX_EFFICIENCY)
        sess = ort.InferenceSession(args.model, sess_options=so)
    else:
        sess = ort.InferenceSession(args.model, sess_options=so, providers=["CPUExecutionProvider"])

    in_name = args.input_name or sess.get_inputs()[0].name
    out_name = args.output_name or sess.get_outputs()[0].name
    feeds = {in_name: x}
    outs = [out_name]

    def measure(iters):
        times = []
        y = None
        for _ in range(iters):
            t0 = time.perf_counter_ns()
            r = sess.run(outs, feeds)
            times.append((time.perf_counter_ns() - t0) / 1e6)
            # The previous output is freed here, outside the timed region, as
            # on the Rust side.
            y = r[0]
            del r
        if y is None:
            y = sess.run(outs, feeds)[0]
        if args.save_output:
            np.ascontiguousarray(y, dtype="<f4").tofile(args.save_output)
        ordered = sorted(times)
        return {
            "onnxruntime": ort.__version__,
            "providers": sess.get_providers(),
            "threads": args.threads,
            "input": in_name,
            "output": out_name,
            "output_shape": list(y.shape),
            "iters": len(times),
            "median_ms": percentile(ordered, 0.5) if ordered else None,
            "p90_ms": percentile(ordered, 0.9) if ordered else None,
            "times_ms": times,
        }

    for _ in range(args.warmup):
        sess.run(outs, feeds)
    if not args.stdin:
        print(json.dumps(measure(args.iters)))
        return
    # Loaded and warmed up: the caller waits for this before timing anything,
    # so that this process's start-up never overlaps the other side's rounds.
    print(json.dumps({"ready": True}), flush=True)
    while True:
        line = sys.stdin.readline()
        if not line:
            break
        if line.strip():
            # One untimed run first: the other side's ONNX Runtime workers
            # may still be spinning right after its round.
            sess.run(outs, feeds)
            print(json.dumps(measure(int(line))), flush=True)


if __name__ == "__main__":
    main()
