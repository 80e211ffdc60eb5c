"""In-context classification with causal LMs: scoring, demonstrations, calibration, reasoning."""
