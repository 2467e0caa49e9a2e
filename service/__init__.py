"""The pseudoserve inference server: the Open Inference Protocol (Triton-compatible) over gRPC for
ONNX models, with dynamic batching, zero-downtime hot-swap and Prometheus metrics.

Layers, outermost first: `server` (process start-up, signals, ready file) builds the gRPC
`servicer` (thin: protobuf <-> domain via `converters`), which calls the transport-agnostic
`DataPlane`, which asks the `ModelManager` for a `ModelVersion`, whose `DynamicBatcher` runs
onnxruntime. Errors are `errors.ServingError` subclasses, mapped to gRPC codes once.
This package never imports `trainer`; the trainer may import `service.tensors`,
`service.repository` and `service.security`.
"""
