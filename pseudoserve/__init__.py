"""pseudoserve: an Open Inference Protocol server for ONNX classifiers that streams its traffic to
a self-training sidecar and hot-swaps the better models that sidecar proves on held-out labels.

This package holds only the command line (`pseudoserve.cli`) and the demo; the server lives in
`service`, the sidecar in `trainer`, the wire formats in `protos`.
"""

__version__ = "0.1.0"
