"""Writes model.onnx: a per-frame colour model (the sepia tone matrix), for
live video-to-video tests with a known answer.

A 1x1 convolution (each output channel a weighted sum of the input's R, G,
B) followed by a clip to [0, 1]: input "image" float32 [1, 3, H, W] in
[0, 1] -> output "styled" [1, 3, H, W]. Small enough to run on every frame
of a 720p stream on a CPU, real enough that the pipeline's colour
conversions, model call and re-encoding are all checked against it.

    python3 models/lpworker/sepia/make_model.py [OUT_DIR]
"""
import os
import sys

import onnx
from onnx import TensorProto, helper

# Rows: output R, G, B; columns: input R, G, B (the classic sepia matrix).
SEPIA = [
    [0.393, 0.769, 0.189],
    [0.349, 0.686, 0.168],
    [0.272, 0.534, 0.131],
]

out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
weights = helper.make_tensor(
    "weights", TensorProto.FLOAT, [3, 3, 1, 1], [w for row in SEPIA for w in row]
)
low = helper.make_tensor("low", TensorProto.FLOAT, [], [0.0])
high = helper.make_tensor("high", TensorProto.FLOAT, [], [1.0])
conv = helper.make_node("Conv", ["image", "weights"], ["mixed"], kernel_shape=[1, 1])
clip = helper.make_node("Clip", ["mixed", "low", "high"], ["styled"])
graph = helper.make_graph(
    [conv, clip], "sepia",
    [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "height", "width"])],
    [helper.make_tensor_value_info("styled", TensorProto.FLOAT, [1, 3, "height", "width"])],
    initializer=[weights, low, high],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="lpworker")
model.ir_version = 8
onnx.checker.check_model(model)
os.makedirs(out_dir, exist_ok=True)
onnx.save(model, os.path.join(out_dir, "model.onnx"))
with open(os.path.join(out_dir, "config.json"), "w") as f:
    f.write('{"pipeline": "live-video-to-video", "runtime": "onnx", "input": "image", "output": "styled"}\n')
