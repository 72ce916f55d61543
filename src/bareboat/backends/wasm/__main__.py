"""`python -m bareboat.backends.wasm PLAN CACHE`: the per-container shim process."""

import sys

from .shim import main

sys.exit(main(sys.argv[1:]))
