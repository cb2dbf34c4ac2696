"""The worker: resident ONNX Runtime sessions serving the queues in batches."""
