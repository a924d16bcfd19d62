"""Adapters to the outside world: Avro, PostgreSQL, Kafka, Prometheus."""
