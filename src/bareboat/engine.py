"""The engine: containers, their lifecycle and state, behind every front end."""
