"""The process backend."""
