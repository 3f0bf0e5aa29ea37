"""The core pipeline's logic: per-record decisions, dedupe, enrichment, owner chains, the counts
API."""
