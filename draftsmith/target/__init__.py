"""Target-model backends: a tokenized batch in, EAGLE-3 features out."""
