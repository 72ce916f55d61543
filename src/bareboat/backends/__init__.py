"""bareboat.backends."""
