"""Names in the exported ONNX graph that the exporter (:mod:`pneumo.training.export`) and the readers of the graph
(:mod:`pneumo.explain.cam`) must agree on. Imports nothing, so both sides can import it without importing each other."""

CAM_OUTPUT = "cam"  # the class activation map output: N x h x w, the map before ReLU
