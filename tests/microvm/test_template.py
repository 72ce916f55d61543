"""MicroVM templates as data: the key, the QEMU command lines, the manifest's validation.

Nothing here starts QEMU; `test_template_vm.py` boots real templates and clones.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bareboat.backends.microvm import template as T
from bareboat.backends.microvm.qemu import build_argv
from bareboat.errors import GuestError, TemplateError, UsageError
from bareboat.paths import Roots

QEMU = "QEMU emulator version 7.2.0"


@pytest.fixture(autouse=True)
def fixed_qemu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Templates here are written for this (fake) QEMU binary."""
    monkeypatch.setattr(T, "qemu_identity", lambda: QEMU)


@pytest.fixture
def inputs(tmp_path: Path) -> T.TemplateInputs:
    for name in ("vmlinux", "initrd", "rootfs.erofs"):
        (tmp_path / name).write_bytes(name.encode())
    return T.TemplateInputs(
        image="sha256:" + "a" * 64,
        kernel=tmp_path / "vmlinux",
        initrd=tmp_path / "initrd",
        lower=tmp_path / "rootfs.erofs",
    )


def test_key_is_stable_and_changes_with_every_input(
    inputs: T.TemplateInputs, tmp_path: Path
) -> None:
    key = T.template_key(inputs, qemu=QEMU)
    assert key == T.template_key(inputs, qemu=QEMU)
    assert len(key) == 64
    changed = [
        T.TemplateInputs(**{**inputs.__dict__, "image": "sha256:" + "b" * 64}),
        T.TemplateInputs(**{**inputs.__dict__, "vcpus": 2}),
        T.TemplateInputs(**{**inputs.__dict__, "memory_mib": 256}),
        T.TemplateInputs(**{**inputs.__dict__, "cmdline": ("foo=1",)}),
        T.TemplateInputs(**{**inputs.__dict__, "accel": "kvm"}),
        T.TemplateInputs(**{**inputs.__dict__, "network": "user"}),
        T.TemplateInputs(**{**inputs.__dict__, "lower_fstype": "ext4"}),
    ]
    keys = {T.template_key(c, qemu=QEMU) for c in changed}
    assert len(keys) == len(changed) and key not in keys
    assert T.template_key(inputs, qemu="QEMU emulator version 8.0") != key
    # a rebuilt kernel or init (new content, same path) is a new template
    (tmp_path / "vmlinux").write_bytes(b"a rebuilt kernel")
    assert T.template_key(inputs, qemu=QEMU) != key
    os.utime(tmp_path / "initrd", ns=(1, 1))
    assert T.template_key(inputs, qemu=QEMU) not in (key,)


def test_missing_input_is_a_template_error(inputs: T.TemplateInputs, tmp_path: Path) -> None:
    (tmp_path / "initrd").unlink()
    with pytest.raises(TemplateError, match="missing"):
        T.template_key(inputs, qemu=QEMU)


def test_template_error_is_a_guest_error() -> None:
    assert issubclass(TemplateError, GuestError)


def test_only_networkless_vms_are_templated(inputs: T.TemplateInputs) -> None:
    with pytest.raises(TemplateError, match="network"):
        T.TemplateInputs(**{**inputs.__dict__, "network": "user"}).validate()
    with pytest.raises(UsageError):
        T.TemplateInputs(**{**inputs.__dict__, "memory_mib": 8}).validate()


def test_template_and_clone_command_lines(inputs: T.TemplateInputs, tmp_path: Path) -> None:
    ram = tmp_path / "tpl" / "ram"
    files = T.VmFiles(tmp_path / "s")
    tpl = build_argv(T.vm_config(inputs, ram=ram, files=files, clone=False))
    clone = build_argv(T.vm_config(inputs, ram=ram, files=T.VmFiles(tmp_path / "c"), clone=True))
    mem = f"memory-backend-file,id=bbmem,size=128M,mem-path={ram}"
    assert f"{mem},share=on" in tpl and "-incoming" not in tpl
    # a clone maps the template's RAM privately (copy on write) and never writes the file
    assert f"{mem},share=off" in clone
    assert clone[clone.index("-incoming") + 1] == "defer"
    assert "memory-backend=bbmem" in clone and "memory-backend=bbmem" in tpl

    # the same devices in the same order: the migrated state names devices by their place
    def devices(argv: list[str]) -> list[str]:
        return [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]

    assert devices(tpl) == devices(clone)
    # host-side socket paths are the clone's own
    assert any(str(tmp_path / "c" / "agent.sock") in a for a in clone)
    assert not any(str(tmp_path / "s") in a for a in clone)


# --- validation of a template directory ---------------------------------------------------------


def fake_template(roots: Roots, inputs: T.TemplateInputs) -> T.Template:
    """A template directory as create_template writes it, without booting anything."""
    key = T.template_key(inputs, qemu=QEMU)
    d = roots.templates / key
    d.mkdir(parents=True)
    (d / T.RAM).write_bytes(b"")
    os.truncate(d / T.RAM, inputs.memory_mib << 20)
    state = os.urandom(4096)
    (d / T.STATE).write_bytes(state)
    m = T.Manifest(
        version=T.FORMAT_VERSION,
        key=key,
        inputs=T.key_material(inputs, qemu=QEMU),
        ram_size=inputs.memory_mib << 20,
        state_size=len(state),
        state_sha256=T._sha256(d / T.STATE),
        created=0.0,
        create_s=1.0,
        ram_identity=T.ram_identity(d / T.RAM),
    )
    (d / T.MANIFEST).write_text(m.to_json())
    return T.load_template(d)


def test_valid_template_loads_and_lists(roots: Roots, inputs: T.TemplateInputs) -> None:
    t = fake_template(roots, inputs)
    assert t.memory_mib == 128 and t.ram.name == "ram"
    [entry] = T.list_templates(roots)
    assert entry.template == t and not entry.error


@pytest.mark.parametrize(
    "damage, message",
    [
        ("state-byte", "checksum"),
        ("state-truncated", "state file is"),
        ("ram-truncated", "RAM file is"),
        ("ram-missing", "incomplete"),
        # what a clone's QEMU, which holds the file open for writing, could do after an escape
        ("ram-written", "was changed"),
        ("version", "format version"),
        ("manifest-missing", "no manifest"),
        ("manifest-garbage", "malformed"),
        ("manifest-fields", "malformed"),
        ("other-key", "another key"),
    ],
)
def test_broken_templates_are_detected(
    roots: Roots, inputs: T.TemplateInputs, damage: str, message: str
) -> None:
    t = fake_template(roots, inputs)
    manifest = json.loads((t.path / T.MANIFEST).read_text())
    match damage:
        case "state-byte":
            data = bytearray(t.state.read_bytes())
            data[100] ^= 0xFF
            t.state.write_bytes(bytes(data))
        case "state-truncated":
            os.truncate(t.state, 100)
        case "ram-truncated":
            os.truncate(t.ram, 1 << 20)
        case "ram-missing":
            t.ram.unlink()
        case "ram-written":
            with open(t.ram, "r+b") as f:
                f.seek(4096)
                f.write(b"planted")
        case "version":
            manifest["version"] = T.FORMAT_VERSION + 1
            (t.path / T.MANIFEST).write_text(json.dumps(manifest))
        case "manifest-missing":
            (t.path / T.MANIFEST).unlink()
        case "manifest-garbage":
            (t.path / T.MANIFEST).write_text("{not json")
        case "manifest-fields":
            del manifest["state_sha256"]
            (t.path / T.MANIFEST).write_text(json.dumps(manifest))
        case "other-key":
            manifest["key"] = "0" * 64
            (t.path / T.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(TemplateError, match=message):
        T.load_template(t.path)
    [entry] = T.list_templates(roots)
    assert entry.template is None and message.split()[0] in entry.error


def test_prune_removes_broken_and_unfinished_only(roots: Roots, inputs: T.TemplateInputs) -> None:
    good = fake_template(roots, inputs)
    bad = fake_template(roots, T.TemplateInputs(**{**inputs.__dict__, "vcpus": 2}))
    os.truncate(bad.ram, 0)
    unfinished = roots.templates / f".tmp-{'c' * 64}-1234abcd"
    unfinished.mkdir()
    removed = T.prune_templates(roots)
    assert sorted(removed) == sorted([bad.key, unfinished.name])
    assert good.path.is_dir() and not bad.path.exists() and not unfinished.exists()
    assert T.prune_templates(roots, all=True) == [good.key]
    assert [p for p in roots.templates.iterdir() if not p.name.endswith(".lock")] == []


def test_stale_templates_are_listed_and_pruned(
    roots: Roots, inputs: T.TemplateInputs, tmp_path: Path
) -> None:
    t = fake_template(roots, inputs)
    [entry] = T.list_templates(roots)
    assert entry.template is not None and entry.stale == ""
    (tmp_path / "vmlinux").write_bytes(b"rebuilt kernel")
    [entry] = T.list_templates(roots)
    assert entry.template is not None and entry.stale == "its kernel changed"
    assert T.prune_templates(roots) == [t.key]


def test_a_qemu_upgrade_makes_templates_stale(
    roots: Roots, inputs: T.TemplateInputs, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_template(roots, inputs)
    monkeypatch.setattr(T, "qemu_identity", lambda: "/usr/bin/qemu-system-x86_64:1:2:3")
    [entry] = T.list_templates(roots)
    assert entry.stale == "QEMU changed"


def test_remove_by_prefix(roots: Roots, inputs: T.TemplateInputs) -> None:
    t = fake_template(roots, inputs)
    assert T.remove_template(roots, t.key[:10])
    assert not t.path.exists()
    assert not T.remove_template(roots, t.key[:10])
    with pytest.raises(UsageError):
        T.remove_template(roots, "../x")
