"""PyFlink jobs of the platform, one per file, each with a main() that also runs under plain `flink run -py`."""
