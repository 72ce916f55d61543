"""bareboat.images."""
