"""`Closing`: an object that holds something until its `close()` (a socket, a client's
connections, a helper process, a VM) is a context manager that closes it when the `with`
block ends, however it ends."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Self


class Closing:
    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
