"""Custom TFX components of the tips pipeline: Iceberg ExampleGen, the anomaly gate, the TF Serving pusher."""
