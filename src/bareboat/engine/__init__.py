"""The engine: containers, their lifecycle and state, behind every front end.

Import the pieces from their modules (`bareboat.engine.engine.Engine`); this package
imports nothing at start so that the CLI stays quick to start.
"""
