"""Data in for the trainer: file loaders with precise error positions (`loaders`), preprocessing
that is baked into the exported ONNX graph (`preprocess`), and the labeled holdout split (`splits`).

Used by the offline CLI (`pseudoserve fit`, `pseudoserve bootstrap`) and the online trainer.
"""
