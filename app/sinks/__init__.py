"""Sink pipelines: k8s-events -> filters -> one destination, committed only after the write."""
