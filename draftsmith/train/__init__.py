"""Training the EAGLE-3 draft: training-time test, feature sources, the trainer and its CLI."""
