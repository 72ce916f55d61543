"""`bareboat-runtime`: the runc-compatible OCI runtime command line."""
