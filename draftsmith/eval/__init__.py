"""Stage 5 evaluation: real speculative decoding of benchmark prompts with an exported draft.

`spec_decode` (the decoding loops), `benchmarks` (prompt loaders), `report` (τ, per-position
acceptance, speedup, lossless flag; JSON / Markdown / PNG), `cli` (the `eval` stage).
"""
