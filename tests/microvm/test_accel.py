"""Accelerator choice: overrides, the probe guest (run for real under TCG), the per-boot cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bareboat.backends.microvm import accel
from bareboat.errors import BackendUnavailable, UsageError
from bareboat.paths import Roots


def test_firmware_is_64k_with_reset_vector_jumping_to_the_loop() -> None:
    fw = accel.probe_firmware(1234)
    assert len(fw) == 0x10000
    assert fw[:2] == b"\x66\xb9" and int.from_bytes(fw[2:6], "little") == 1234
    # jmp near from F000:FFF0 lands on offset 0.
    assert fw[0xFFF0] == 0xE9
    rel = int.from_bytes(fw[0xFFF1:0xFFF3], "little")
    assert (0xFFF3 + rel) & 0xFFFF == 0
    with pytest.raises(UsageError):
        accel.probe_firmware(0)


def test_probe_argv_runs_the_firmware_with_an_exit_port(tmp_path: Path) -> None:
    argv = accel.probe_argv(tmp_path / "fw.bin", "kvm")
    assert argv[argv.index("-accel") + 1] == "kvm"
    assert argv[argv.index("-bios") + 1] == str(tmp_path / "fw.bin")
    assert any(a.startswith("isa-debug-exit,iobase=0xf4") for a in argv)


@pytest.mark.parametrize(("value", "want"), [("kvm", "kvm"), ("tcg", "tcg"), (" TCG ", "tcg")])
def test_explicit_choice_wins_without_probing(
    roots: Roots, monkeypatch: pytest.MonkeyPatch, value: str, want: str
) -> None:
    monkeypatch.setattr(accel, "run_probe", _no_probe)
    monkeypatch.setattr(accel, "kvm_usable", lambda: None)  # as on a host with /dev/kvm
    monkeypatch.setenv(accel.ENV_ACCEL, "auto")
    choice = accel.choose_accel(roots, value)
    assert choice.accel == want and "requested" in choice.reason


def test_environment_overrides_the_probe(roots: Roots, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "run_probe", _no_probe)
    monkeypatch.setenv(accel.ENV_ACCEL, "tcg")
    choice = accel.choose_accel(roots)
    assert choice == accel.AccelChoice("tcg", "tcg $BAREBOAT_ACCEL")


def test_forced_kvm_without_a_kvm_device_is_unavailable(
    roots: Roots, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accel, "KVM_DEVICE", Path("/nonexistent/kvm"))
    monkeypatch.setenv(accel.ENV_ACCEL, "kvm")
    with pytest.raises(BackendUnavailable, match=r"KVM was requested \(\$BAREBOAT_ACCEL\)"):
        accel.choose_accel(roots)


def test_unknown_accelerator_is_a_usage_error(roots: Roots) -> None:
    with pytest.raises(UsageError, match="hvf"):
        accel.choose_accel(roots, "hvf")


def _no_probe(*args: object, **kw: object) -> accel.ProbeResult:
    raise AssertionError("the probe ran although the choice was forced")


def _need_qemu() -> None:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")


def test_probe_guest_runs_and_exits_under_tcg() -> None:
    # The same firmware the KVM probe boots, under TCG: proves it reaches the exit port.
    _need_qemu()
    result = accel.run_probe("tcg", loops=1000, budget=30.0)
    assert result.ok, result.detail


def test_probe_that_overruns_its_budget_fails_and_leaves_no_qemu() -> None:
    _need_qemu()
    # ~4 billion iterations: far beyond 0.5 s even natively.
    result = accel.run_probe("tcg", loops=0xFFFFFFFF, budget=0.5)
    assert not result.ok and "did not finish" in result.detail


def test_auto_probes_once_per_boot_and_caches(
    roots: Roots, monkeypatch: pytest.MonkeyPatch
) -> None:
    _need_qemu()
    monkeypatch.delenv(accel.ENV_ACCEL, raising=False)
    monkeypatch.setattr(accel, "kvm_usable", lambda: None)  # pretend /dev/kvm opens
    calls: list[str] = []

    def probe(kind: str = "kvm", **kw: object) -> accel.ProbeResult:
        calls.append(kind)
        return accel.ProbeResult(False, 2.0, "a tiny guest did not finish in 2 s")

    monkeypatch.setattr(accel, "run_probe", probe)
    first = accel.choose_accel(roots)
    assert first.accel == "tcg" and "did not finish" in first.reason and not first.cached
    second = accel.choose_accel(roots)
    assert second.accel == "tcg" and second.cached and calls == ["kvm"]
    # Another boot (or another QEMU) invalidates the verdict.
    data = json.loads((roots.state / "accel.json").read_text())
    data["key"] = "another-boot"
    (roots.state / "accel.json").write_text(json.dumps(data))
    assert not accel.choose_accel(roots).cached and calls == ["kvm", "kvm"]


def test_auto_without_kvm_device_is_tcg(roots: Roots, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(accel.ENV_ACCEL, raising=False)
    monkeypatch.setattr(accel, "KVM_DEVICE", Path("/nonexistent/kvm"))
    monkeypatch.setattr(accel, "run_probe", _no_probe)
    choice = accel.choose_accel(roots)
    assert choice.accel == "tcg" and "does not exist" in choice.reason


def test_auto_on_this_host_gives_a_reasoned_answer(roots: Roots) -> None:
    """The real probe: on these nested hosts KVM emulates and TCG must win; on a real KVM
    host the probe must pass. Either way the reason says why."""
    _need_qemu()
    choice = accel.choose_accel(roots, "auto", use_cache=False)
    assert choice.accel in ("kvm", "tcg") and choice.reason
    if accel.kvm_usable() is not None:
        assert choice.accel == "tcg"
