"""kubevents: keep every Kubernetes Event, through Kafka, without losing or doubling any."""

__version__ = "0.1.0"
