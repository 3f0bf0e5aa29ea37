"""Kafka: client settings and diagnosis, admin, partitioning, the producer that renews itself, the
awaited batch writer."""
