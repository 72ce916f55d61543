"""What every user of cgroupfs here needs: removing a cgroup once its last process is gone.
Plain os/time: bareboat-runtime's hot path uses it."""

from __future__ import annotations

import os
import time


def remove_when_empty(path: str | os.PathLike[str], timeout: float = 5.0) -> None:
    """Remove the cgroup `path` once its processes are gone (rmdir fails with EBUSY until
    then). A process stuck in the kernel past `timeout` leaves the empty cgroup: that beats a
    failed delete. A cgroup already gone is fine."""
    deadline = time.monotonic() + timeout
    # Right after its last process was reaped a cgroup is usually empty within a millisecond or
    # two (a VMM's threads finishing their exit): short waits first, so teardowns do not wait
    # a fixed 10 ms for it.
    pause = 0.0005
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                return
            time.sleep(pause)
            pause = min(pause * 2, 0.01)
