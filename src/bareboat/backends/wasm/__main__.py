"""`python -m bareboat.backends.wasm PLAN CACHE`: the per-container shim process."""

import sys

from .backend import shim_main

sys.exit(shim_main(sys.argv[1:]))
