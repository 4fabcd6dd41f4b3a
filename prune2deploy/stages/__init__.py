"""The pipeline's stages, in order: one module each, which declares at its top what it needs
(NEEDS: upstream stages whose records it reads), what it reads of the recipe (READS: its
cache key, with the upstream outputs) and whether every rank runs it (PARALLEL), and has one
`run(ctx)`. A new stage is one module plus its name here; the runner (`run.py`) builds its
tables from the modules, and nothing else imports them."""

STAGES = ("latency", "teacher", "prune", "validate", "export", "quantize", "bench")
