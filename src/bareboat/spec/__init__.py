"""bareboat.spec."""
