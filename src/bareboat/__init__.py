"""bareboat: run OCI images as microVMs, namespace containers, Wasm sandboxes or plain processes.

Importing this package must stay cheap: the OCI runtime CLI is started several times per
container, so nothing heavy is imported at package level.
"""

__version__ = "0.1.0"
