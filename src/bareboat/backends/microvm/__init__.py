"""The microvm backend."""
