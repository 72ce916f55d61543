"""Helpers the tests share: image building, real servers they start and stop."""
