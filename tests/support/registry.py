"""A real OCI registry for tests: Debian's `docker-registry` on 127.0.0.1 with a free port.

    with Registry(tmp_path) as reg:                    # anonymous
    with Registry(tmp_path, users={"u": "pw"}) as reg: # htpasswd (Basic challenge)
        reg.push(layout, "latest", "test/busybox:1")   # skopeo copy oci:... docker://...

Configuration and storage live in the given directory; the server is always stopped.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

import pytest

REGISTRY_BIN = "docker-registry"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Registry:
    def __init__(self, workdir: Path, *, users: dict[str, str] | None = None) -> None:
        if not shutil.which(REGISTRY_BIN):
            pytest.skip("docker-registry is not installed")
        self.dir = workdir
        self.storage = workdir / "storage"
        self.users = users or {}
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "registry.log"

    def _config(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        auth = ""
        if self.users:
            lines = []
            for user, password in self.users.items():
                out = subprocess.run(
                    ["htpasswd", "-Bbn", user, password],
                    capture_output=True,
                    text=True,
                    check=True,
                    timeout=30,
                )
                lines.append(out.stdout.strip())
            htpasswd = self.dir / "htpasswd"
            htpasswd.write_text("\n".join(lines) + "\n")
            auth = f"auth:\n  htpasswd:\n    realm: bareboat-test\n    path: {htpasswd}\n"
        cfg = self.dir / "config.yml"
        cfg.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.storage}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}\n"
            f"{auth}"
        )
        return cfg

    def start(self) -> Registry:
        cfg = self._config()
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [REGISTRY_BIN, "serve", str(cfg)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {self.log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1).close()
                return self
            except urllib.error.HTTPError:
                return self  # 401 with auth: it is up
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("docker-registry did not start in 20 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def ref(self, name: str) -> str:
        return f"{self.host}/{name}"

    def push(
        self, layout: Path, tag: str, name: str, *, all_images: bool = False, docker: bool = False
    ) -> None:
        """Copy `oci:LAYOUT:TAG` to `docker://HOST/NAME` with skopeo; `docker` converts it to
        Docker schema 2 (manifest list, manifest and layer media types)."""
        cmd = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false"]
        if all_images:
            cmd.append("--all")
        if docker:
            cmd += ["--format", "v2s2"]
        if self.users:
            user, password = next(iter(self.users.items()))
            cmd += ["--dest-creds", f"{user}:{password}"]
        cmd += [f"oci:{layout}:{tag}", f"docker://{self.ref(name)}"]
        subprocess.run(cmd, check=True, capture_output=True, timeout=300)

    def blob_path(self, digest: str) -> Path:
        hexd = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"
