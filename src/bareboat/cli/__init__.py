"""The `bareboat` command line: a thin shell over the engine and the image store."""
