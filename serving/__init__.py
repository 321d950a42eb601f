"""Model serving speaking TF Serving's gRPC and REST API: filled in by the model-serving issue."""
