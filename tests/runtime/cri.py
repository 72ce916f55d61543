"""A minimal Kubernetes CRI v1 client (runtime.v1.RuntimeService) for the tests: what a kubelet
asks of containerd's CRI plugin for one pod, over gRPC on containerd's socket.

There is no crictl in Debian 12 and no generated code here: grpcio carries the calls with our
own (de)serializers, and messages are encoded by hand in protobuf's wire format. The field
numbers are those of k8s.io/cri-api/pkg/apis/runtime/v1/api.proto; only the fields the tests
set or read are named.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

SERVICE = "/runtime.v1.RuntimeService/"

# NamespaceMode
POD = 0
NODE = 2
# ContainerState
CONTAINER_CREATED, CONTAINER_RUNNING, CONTAINER_EXITED, CONTAINER_UNKNOWN = 0, 1, 2, 3

# A field's value: text, bytes or an encoded message (length-delimited), an int or bool
# (varint), a list (repeated), a dict (map<string, string>).
Value: TypeAlias = str | bytes | int | bool | list["Value"] | dict[str, str]


# --- protobuf wire format ------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int32/int64 negatives are ten-byte two's complement
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _field(num: int, value: Value) -> bytes:
    if isinstance(value, list):
        return b"".join(_field(num, v) for v in value)
    if isinstance(value, dict):
        # A map is a repeated message of (key = 1, value = 2).
        return b"".join(_field(num, encode({1: k, 2: v})) for k, v in value.items())
    if isinstance(value, bool | int):
        return _varint(num << 3) + _varint(int(value))
    data = value.encode() if isinstance(value, str) else value
    return _varint(num << 3 | 2) + _varint(len(data)) + data


def encode(fields: dict[int, Value]) -> bytes:
    """A message from {field number: value}; None-free, empty values are still sent."""
    return b"".join(_field(num, value) for num, value in fields.items())


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, pos


Fields: TypeAlias = dict[int, list[int | bytes]]


def decode(data: bytes) -> Fields:
    """{field number: [values]}: varints as ints, length-delimited fields as bytes (decode a
    nested message again with `decode`)."""
    out: Fields = {}
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        num, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _read_varint(data, pos)
        elif wire == 2:
            size, pos = _read_varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
        elif wire == 1:
            value, pos = int.from_bytes(data[pos : pos + 8], "little"), pos + 8
        elif wire == 5:
            value, pos = int.from_bytes(data[pos : pos + 4], "little"), pos + 4
        else:
            raise ValueError(f"protobuf wire type {wire} in field {num}")
        out.setdefault(num, []).append(value)
    return out


def _int(fields: Fields, num: int) -> int:
    """An int32/int64 field (negatives come as ten-byte varints)."""
    v = fields.get(num, [0])[-1]
    assert isinstance(v, int)
    return v - (1 << 64) if v >= 1 << 63 else v


def _bytes(fields: Fields, num: int) -> bytes:
    v = fields.get(num, [b""])[-1]
    assert isinstance(v, bytes)
    return v


def _str(fields: Fields, num: int) -> str:
    return _bytes(fields, num).decode()


# --- messages --------------------------------------------------------------------------------


def pod_config(name: str, uid: str, log_dir: Path, *, host_network: bool = True) -> bytes:
    """PodSandboxConfig: the host's network (host name empty, as NODE allows), or a network
    namespace of the pod's own that the CNI plugins configure."""
    metadata = encode({1: name, 2: uid, 3: "default", 4: 0})
    namespaces = encode({1: NODE if host_network else POD})
    security = encode({1: namespaces})
    linux = encode({2: security})
    return encode({1: metadata, 3: str(log_dir), 8: linux})


def container_config(
    name: str,
    image: str,
    command: list[str],
    log_path: str,
    annotations: dict[str, str] | None = None,
) -> bytes:
    """ContainerConfig: metadata, image, command, annotations, log path (relative to the pod's
    log directory)."""
    fields: dict[int, Value] = {
        1: encode({1: name, 2: 0}),
        2: encode({1: image}),
        3: [*command],
        11: log_path,
    }
    if annotations:
        fields[10] = annotations
    return encode(fields)


@dataclass
class ContainerStatus:
    state: int
    exit_code: int
    log_path: str
    reason: str
    message: str


@dataclass
class ExecResult:
    stdout: bytes
    stderr: bytes
    exit_code: int


# --- the client ------------------------------------------------------------------------------


def _identity(data: bytes) -> bytes:
    return data


class RuntimeService:
    """runtime.v1.RuntimeService on a unix socket; each call returns the decoded response."""

    def __init__(self, socket: Path) -> None:
        # Imported here so that a venv without grpcio fails only the CRI tests (setup installs
        # it with the dev extras).
        import grpc

        self.grpc = grpc
        self.channel = grpc.insecure_channel(f"unix://{socket}")

    def call(self, method: str, request: bytes, timeout: float = 120) -> Fields:
        rpc = self.channel.unary_unary(
            SERVICE + method, request_serializer=_identity, response_deserializer=_identity
        )
        try:
            response = rpc(request, timeout=timeout)
        except self.grpc.RpcError as e:
            raise AssertionError(f"CRI {method}: {e.code()}: {e.details()}") from None
        assert isinstance(response, bytes)
        return decode(response)

    def version(self) -> str:
        """The runtime's name and version, e.g. "containerd v1.6.20~ds1"."""
        res = self.call("Version", encode({1: "v1"}))
        return f"{_str(res, 2)} {_str(res, 3)}"

    def run_pod_sandbox(self, config: bytes, handler: str) -> str:
        return _str(self.call("RunPodSandbox", encode({1: config, 2: handler})), 1)

    def stop_pod_sandbox(self, pod_id: str) -> None:
        self.call("StopPodSandbox", encode({1: pod_id}))

    def remove_pod_sandbox(self, pod_id: str) -> None:
        self.call("RemovePodSandbox", encode({1: pod_id}))

    def pod_sandbox_handler(self, pod_id: str) -> str:
        status = decode(_bytes(self.call("PodSandboxStatus", encode({1: pod_id})), 1))
        return _str(status, 9)

    def pod_ip(self, pod_id: str) -> str:
        """PodSandboxStatus.network.ip: the address CNI gave the pod."""
        status = decode(_bytes(self.call("PodSandboxStatus", encode({1: pod_id})), 1))
        return _str(decode(_bytes(status, 5)), 1)

    def list_pod_sandboxes(self) -> list[str]:
        items = self.call("ListPodSandbox", b"").get(1, [])
        return [_str(decode(i), 1) for i in items if isinstance(i, bytes)]

    def create_container(self, pod_id: str, config: bytes, pod: bytes) -> str:
        res = self.call("CreateContainer", encode({1: pod_id, 2: config, 3: pod}))
        return _str(res, 1)

    def start_container(self, cid: str) -> None:
        self.call("StartContainer", encode({1: cid}))

    def stop_container(self, cid: str, timeout: int = 0) -> None:
        self.call("StopContainer", encode({1: cid, 2: timeout}))

    def remove_container(self, cid: str) -> None:
        self.call("RemoveContainer", encode({1: cid}))

    def container_status(self, cid: str) -> ContainerStatus:
        s = decode(_bytes(self.call("ContainerStatus", encode({1: cid})), 1))
        return ContainerStatus(
            state=_int(s, 3),
            exit_code=_int(s, 7),
            log_path=_str(s, 15),
            reason=_str(s, 10),
            message=_str(s, 11),
        )

    def wait_exited(self, cid: str, timeout: float = 120) -> ContainerStatus:
        end = time.monotonic() + timeout
        while True:
            status = self.container_status(cid)
            if status.state == CONTAINER_EXITED or time.monotonic() > end:
                return status
            time.sleep(0.1)

    def exec_sync(self, cid: str, cmd: list[str], timeout: int = 60) -> ExecResult:
        res = self.call("ExecSync", encode({1: cid, 2: [*cmd], 3: timeout}), timeout=timeout + 30)
        return ExecResult(_bytes(res, 1), _bytes(res, 2), _int(res, 3))

    def close(self) -> None:
        self.channel.close()
