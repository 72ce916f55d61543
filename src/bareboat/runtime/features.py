"""`features`: runc's own features document, plus what bareboat adds (the isolation
annotation and its values), so a client can tell this runtime apart."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from .args import Invocation
from .isolation import ANNOTATION, KNOWN
from .records import RuntimeRoot

MINIMAL: dict[str, Any] = {
    "ociVersionMin": "1.0.0",
    "ociVersionMax": "1.0.2-dev",
    "hooks": [
        "prestart",
        "createRuntime",
        "createContainer",
        "startContainer",
        "poststart",
        "poststop",
    ],
}


def features(inv: Invocation, root: RuntimeRoot) -> int:
    from .delegate import find_runtime

    doc: dict[str, Any] = dict(MINIMAL)
    try:
        res = subprocess.run(
            [find_runtime(os.environ), "features"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if res.returncode == 0:
            doc = json.loads(res.stdout)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        pass
    ann = doc.setdefault("annotations", {})
    ann[ANNOTATION] = ",".join(KNOWN)
    ann["io.bareboat.runtime.version"] = "0.1.0"
    print(json.dumps(doc, indent=4))
    return 0
