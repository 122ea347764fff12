"""The stages of the linreg pipeline: one module per DVC stage, plus the modules they share."""
