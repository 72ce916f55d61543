"""What bareboat-runtime remembers per container under its `--root`.

Layout under the root (`--root`, else BAREBOAT_RUNTIME_ROOT, else $BAREBOAT_STATE/runtime,
i.e. /run/bareboat/runtime):
  runc/            the delegated runc's own `--root` (container isolation)
  bareboat/ID.rec   two lines, the isolation and the bundle path: written before the container
                   exists, so every later call dispatches to the same isolation; removed by
                   `delete`. Plain lines, not JSON: `json` drags `re` into every call.
The root and `bareboat/` are 0700 (bareboat.privdir), as runc keeps its own root.
"""

from __future__ import annotations

import os

# Typing names only for mypy: `typing` imports `re` and `collections.abc` (~10 ms here), and
# with postponed annotations nothing needs them at run time. mypy treats any TYPE_CHECKING
# name as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from bareboat.sandboxdir import SandboxDir


DEFAULT_STATE = "/run/bareboat"


def default_root(env: Mapping[str, str]) -> str:
    """podman passes no `--root` to a runtime it does not know by name, so the default must be
    steerable: BAREBOAT_RUNTIME_ROOT, else `runtime/` under bareboat's state root."""
    return env.get("BAREBOAT_RUNTIME_ROOT") or os.path.join(
        env.get("BAREBOAT_STATE") or DEFAULT_STATE, "runtime"
    )


def check_id(cid: str) -> str:
    # The id becomes a file name: no separators, no dot names, a sane length.
    if not cid or len(cid) > 1024 or "/" in cid or cid in (".", "..") or "\0" in cid:
        from bareboat.errors import UsageError

        raise UsageError(f"invalid container id {cid!r}")
    return cid


# Plain classes and str paths, not dataclasses, NamedTuples and pathlib: each costs
# milliseconds of import on a path that podman and containerd run several times per container.
# bareboat.errors likewise is imported where an error is raised (~1 ms of building classes).
def write_atomic(path: str, text: str) -> None:
    """Write a temp file beside `path` and rename it over: readers see all or nothing.

    Not bareboat.fsutil: its tempfile/pathlib imports and fsync cost ~10 ms on every
    `create`, and these records live on the runtime root (tmpfs /run) and describe processes
    that do not survive a reboot anyway, so durability buys nothing.
    """
    tmp = f"{os.path.dirname(path)}/.{os.path.basename(path)}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:  # noqa: SIM105 - contextlib costs import time here
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class Record:
    __slots__ = ("bundle", "id", "isolation")

    def __init__(self, id: str, isolation: str, bundle: str) -> None:
        self.id = id
        self.isolation = isolation
        self.bundle = bundle

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Record) and (self.id, self.isolation, self.bundle) == (
            other.id,
            other.isolation,
            other.bundle,
        )

    def __hash__(self) -> int:
        return hash((self.id, self.isolation, self.bundle))


class RuntimeRoot:
    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path

    @classmethod
    def of(cls, root: str, env: Mapping[str, str] | None = None) -> RuntimeRoot:
        return cls(os.path.abspath(root or default_root(os.environ if env is None else env)))

    @property
    def runc(self) -> str:
        return os.path.join(self.path, "runc")

    @property
    def records(self) -> str:
        return os.path.join(self.path, "bareboat")

    def state_dir(self, cid: str) -> str:
        """Per-container working directory of the isolations bareboat runs itself."""
        return os.path.join(self.path, "bareboat", check_id(cid))

    def sandbox(self, cid: str) -> SandboxDir:
        """The files of the container's sandbox (bareboat.sandboxdir)."""
        # Imported by the calls that use it: container isolation's never do (nor privdir's).
        from bareboat.sandboxdir import SandboxDir

        return SandboxDir(self.state_dir(cid))

    def record_path(self, cid: str) -> str:
        return os.path.join(self.records, f"{check_id(cid)}.rec")

    def load(self, cid: str) -> Record | None:
        try:
            with open(self.record_path(cid), encoding="utf-8") as f:
                lines = f.read().split("\n")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            from bareboat.errors import ContainerNotFound

            raise ContainerNotFound(f"container {cid}: unreadable record: {e}") from None
        if len(lines) != 3 or lines[2] != "":
            from bareboat.errors import ContainerNotFound

            raise ContainerNotFound(f"container {cid}: malformed record")
        return Record(cid, lines[0], lines[1])

    def save(self, rec: Record) -> None:
        if "\n" in rec.bundle or "\n" in rec.isolation:
            from bareboat.errors import UsageError

            raise UsageError(f"bundle path {rec.bundle!r} holds a newline")
        from bareboat.privdir import private_dir

        # The root and its records 0700, an older 0755 root tightened: container state (a
        # VM's disk of the client's rootfs among it) is no other user's to read.
        private_dir(self.path)
        private_dir(self.records)
        write_atomic(self.record_path(rec.id), f"{rec.isolation}\n{rec.bundle}\n")

    def claim(self, rec: Record) -> None:
        """Save a new record; an id already in use is an error (as in runc)."""
        if os.path.exists(self.record_path(rec.id)):
            from bareboat.errors import UsageError

            raise UsageError(f"container with id {rec.id} already exists")
        self.save(rec)

    def drop(self, cid: str) -> None:
        try:  # noqa: SIM105 - contextlib costs import time here
            os.unlink(self.record_path(cid))
        except FileNotFoundError:
            pass

    def all(self) -> list[Record]:
        try:
            names = sorted(os.listdir(self.records))
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            if name.endswith(".rec"):
                rec = self.load(name[: -len(".rec")])
                if rec is not None:
                    out.append(rec)
        return out
