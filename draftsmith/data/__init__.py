"""Data stages: raw datasets -> canonical conversations JSONL (prepare-data, validate-data)
-> tokenized dataset with loss masks (build-dataset)."""
