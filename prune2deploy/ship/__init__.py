"""After the pipeline: CI gates, packaging, and verification of shipped artifacts."""
