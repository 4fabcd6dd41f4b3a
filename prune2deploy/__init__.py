"""prune2deploy: prune a BERT-family model for a task and ship a verified, benchmarked ONNX."""

__version__ = "0.1.0"
