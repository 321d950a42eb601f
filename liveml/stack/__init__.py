"""The local stack: real Kafka, Flink, Redis, Iceberg catalog and Prometheus on loopback."""
