"""Writes model.onnx: a 2x image upscaler that is exactly nearest-neighbour.

A tiny model with a known output, so the upscale pipeline's loading, pre- and
post-processing and API shape are tested for real without downloads:
input "image" float32 [1, 3, H, W] in [0, 1] -> output "upscaled" [1, 3, 2H, 2W].

    python3 models/lpworker/nearest-2x/make_model.py [OUT_DIR]
"""
import os
import sys

import onnx
from onnx import TensorProto, helper

out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1.0, 1.0, 2.0, 2.0])
resize = helper.make_node(
    "Resize", ["image", "", "scales"], ["upscaled"],
    mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor",
)
graph = helper.make_graph(
    [resize], "nearest_2x",
    [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "height", "width"])],
    [helper.make_tensor_value_info("upscaled", TensorProto.FLOAT, [1, 3, "out_height", "out_width"])],
    initializer=[scales],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="lpworker")
model.ir_version = 8
onnx.checker.check_model(model)
os.makedirs(out_dir, exist_ok=True)
onnx.save(model, os.path.join(out_dir, "model.onnx"))
with open(os.path.join(out_dir, "config.json"), "w") as f:
    f.write('{"pipeline": "upscale", "runtime": "onnx", "input": "image", "output": "upscaled", "scale": 2}\n')
