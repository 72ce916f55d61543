"""The guest kernel: fragment survival as data, the cache key, vmlinux checks, the build."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import pytest

from bareboat.backends.microvm import kernel
from bareboat.errors import GuestError, KernelMissing
from bareboat.paths import Roots

FRAGMENT = """\
# comment
CONFIG_64BIT=y
CONFIG_EROFS_FS=y
CONFIG_SERIAL_8250_NR_UARTS=1
# CONFIG_MODULES is not set
"""


def test_parse_config_reads_set_and_unset_options() -> None:
    parsed = kernel.parse_config(FRAGMENT + 'CONFIG_CMDLINE="a b"\n')
    assert parsed == {
        "CONFIG_64BIT": "y",
        "CONFIG_EROFS_FS": "y",
        "CONFIG_SERIAL_8250_NR_UARTS": "1",
        "CONFIG_MODULES": "n",
        "CONFIG_CMDLINE": '"a b"',
    }


def test_dropped_options_names_what_olddefconfig_removed() -> None:
    # What allnoconfig does to EROFS when MISC_FILESYSTEMS is off: the line just vanishes.
    config = "CONFIG_64BIT=y\nCONFIG_SERIAL_8250_NR_UARTS=4\n"
    dropped = kernel.dropped_options(kernel.parse_config(FRAGMENT), kernel.parse_config(config))
    assert dropped == [
        kernel.DroppedOption("CONFIG_EROFS_FS", "y", "n"),
        kernel.DroppedOption("CONFIG_SERIAL_8250_NR_UARTS", "1", "4"),
    ]


def test_unset_option_that_got_enabled_is_dropped() -> None:
    dropped = kernel.dropped_options({"CONFIG_MODULES": "n"}, {"CONFIG_MODULES": "y"})
    assert dropped == [kernel.DroppedOption("CONFIG_MODULES", "n", "y")]


def test_check_config_raises_one_line_naming_the_options() -> None:
    with pytest.raises(GuestError) as err:
        kernel.check_config(FRAGMENT, "CONFIG_64BIT=y\n# CONFIG_EROFS_FS is not set\n")
    msg = str(err.value)
    assert "\n" not in msg
    assert "CONFIG_EROFS_FS=y (got n)" in msg
    assert "CONFIG_SERIAL_8250_NR_UARTS" in msg
    assert "CONFIG_64BIT" not in msg


def test_check_config_accepts_a_config_that_keeps_everything() -> None:
    kernel.check_config(FRAGMENT, FRAGMENT + "CONFIG_OTHER=y\n")


def test_repo_fragment_is_sane() -> None:
    frag = kernel.parse_config(kernel.read_fragment())
    # The groups a container guest needs, and the traps DESIGN.md names.
    for name in (
        "CONFIG_64BIT", "CONFIG_PVH", "CONFIG_KVM_GUEST", "CONFIG_BINFMT_ELF",
        "CONFIG_BINFMT_SCRIPT", "CONFIG_BLK_DEV_INITRD", "CONFIG_VIRTIO_MMIO",
        "CONFIG_VIRTIO_BLK", "CONFIG_VIRTIO_CONSOLE", "CONFIG_VIRTIO_NET", "CONFIG_EROFS_FS",
        "CONFIG_MISC_FILESYSTEMS", "CONFIG_OVERLAY_FS", "CONFIG_EXT4_FS", "CONFIG_ACPI",
        "CONFIG_PCI", "CONFIG_SECCOMP_FILTER", "CONFIG_CGROUPS", "CONFIG_SERIAL_8250_CONSOLE",
    ):  # fmt: skip
        assert frag.get(name) == "y", name
    assert frag["CONFIG_MODULES"] == "n"


def test_cache_key_follows_source_version_and_fragment() -> None:
    a = kernel.cache_key("6.1.1-1", FRAGMENT)
    assert a == kernel.cache_key("6.1.1-1", FRAGMENT)
    assert a != kernel.cache_key("6.1.2-1", FRAGMENT)
    assert a != kernel.cache_key("6.1.1-1", FRAGMENT + "CONFIG_IPV6=y\n")
    assert len(a) == 32 and int(a, 16) >= 0


def test_plan_build_is_tinyconfig_merge_olddefconfig_vmlinux(tmp_path: Path) -> None:
    source = kernel.KernelSource(Path("/usr/src/linux-source-6.1.tar.xz"), "6.1.1-1")
    plan = kernel.plan_build(source, tmp_path / "f.config", "k", tmp_path, jobs=3)
    argvs = [s.argv for s in plan.steps]
    assert argvs[0][:2] == ["tar", "-xf"] and str(tmp_path / "src") in argvs[0]
    assert argvs[1][-1] == "tinyconfig" and f"O={tmp_path / 'out'}" in argvs[1]
    assert argvs[2][0].endswith("scripts/kconfig/merge_config.sh") and "-m" in argvs[2]
    assert argvs[3][-1] == "olddefconfig"
    assert argvs[4][-2:] == ["-j3", "vmlinux"]
    assert "ARCH=x86_64" in argvs[4]
    assert not any("modules" in a for argv in argvs for a in argv)
    assert plan.vmlinux == tmp_path / "out" / "vmlinux"


# --- vmlinux checks -------------------------------------------------------------------------


def _elf_with_notes(path: Path, notes: bytes) -> Path:
    """A minimal x86-64 ELF header + one PT_NOTE program header holding `notes`."""
    ehdr = bytearray(64)
    ehdr[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<HH", ehdr, 16, 2, 62)  # ET_EXEC, EM_X86_64
    struct.pack_into("<Q", ehdr, 32, 64)  # e_phoff
    struct.pack_into("<HH", ehdr, 54, 56, 1)  # e_phentsize, e_phnum
    phdr = struct.pack("<IIQQQQQQ", 4, 0, 64 + 56, 0, 0, len(notes), len(notes), 4)
    path.write_bytes(bytes(ehdr) + phdr + notes)
    return path


def _note(name: bytes, ntype: int, desc: bytes) -> bytes:
    pad = lambda b: b + b"\0" * (-len(b) % 4)  # noqa: E731
    return struct.pack("<III", len(name), len(desc), ntype) + pad(name) + pad(desc)


def test_check_vmlinux_accepts_an_elf_with_the_pvh_note(tmp_path: Path) -> None:
    notes = _note(b"GNU\0", 3, b"x" * 20) + _note(b"Xen\0", 18, b"\0\0\0\1")
    kernel.check_vmlinux(_elf_with_notes(tmp_path / "vmlinux", notes))


def test_check_vmlinux_refuses_elf_without_pvh_note(tmp_path: Path) -> None:
    path = _elf_with_notes(tmp_path / "vmlinux", _note(b"Xen\0", 17, b"\0" * 4))
    with pytest.raises(KernelMissing, match="PVH"):
        kernel.check_vmlinux(path)
    # A real ELF that is not a kernel: no PVH note either.
    true = shutil.which("true")
    assert true
    with pytest.raises(KernelMissing, match="PVH"):
        kernel.check_vmlinux(Path(true))


def test_check_vmlinux_refuses_non_elf_and_missing(tmp_path: Path) -> None:
    bz = tmp_path / "bzImage"
    bz.write_bytes(b"MZ" + b"\0" * 600)
    with pytest.raises(KernelMissing, match="not an ELF kernel"):
        kernel.check_vmlinux(bz)
    with pytest.raises(KernelMissing, match="does not exist"):
        kernel.check_vmlinux(tmp_path / "nope")
    with pytest.raises(KernelMissing, match="directory"):
        kernel.check_vmlinux(tmp_path)
    trunc = tmp_path / "short"
    trunc.write_bytes(b"\x7fELF")
    with pytest.raises(KernelMissing):
        kernel.check_vmlinux(trunc)


# --- choosing the kernel --------------------------------------------------------------------


def _empty_cache(tmp_path: Path, roots: Roots) -> Roots:
    return Roots(root=roots.root, state=roots.state, cache=tmp_path / "cache")


def test_resolve_kernel_prefers_explicit_then_env_then_config(
    tmp_path: Path, roots: Roots, monkeypatch: pytest.MonkeyPatch
) -> None:
    notes = _note(b"Xen\0", 18, b"\0" * 4)
    a = _elf_with_notes(tmp_path / "a", notes)
    b = _elf_with_notes(tmp_path / "b", notes)
    c = _elf_with_notes(tmp_path / "c", notes)
    r = _empty_cache(tmp_path, roots)
    monkeypatch.setenv(kernel.ENV_KERNEL, str(b))
    assert kernel.resolve_kernel(r, explicit=a, configured=c).path == a
    choice = kernel.resolve_kernel(r, configured=c)
    assert (choice.path, choice.origin) == (b, "$BAREBOAT_KERNEL")
    monkeypatch.delenv(kernel.ENV_KERNEL)
    assert kernel.resolve_kernel(r, configured=c).origin == "config"


def test_resolve_kernel_checks_user_kernels(
    tmp_path: Path, roots: Roots, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(kernel.ENV_KERNEL, str(tmp_path / "missing"))
    with pytest.raises(KernelMissing, match="does not exist"):
        kernel.resolve_kernel(roots)


def test_resolve_kernel_without_a_build_says_how_to_build(
    tmp_path: Path, roots: Roots, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not kernel.SOURCE_TARBALL.exists():
        pytest.skip(f"{kernel.SOURCE_TARBALL} is not installed")
    monkeypatch.delenv(kernel.ENV_KERNEL, raising=False)
    with pytest.raises(KernelMissing, match="bareboat guest build"):
        kernel.resolve_kernel(_empty_cache(tmp_path, roots))


def test_built_kernel_is_a_pvh_vmlinux_with_every_fragment_option(roots: Roots) -> None:
    if not kernel.SOURCE_TARBALL.exists():
        pytest.skip(f"{kernel.SOURCE_TARBALL} is not installed")
    path = kernel.built_kernel(roots)
    if path is None:
        pytest.skip("the guest kernel is not built (run `bareboat guest build`)")
    kernel.check_vmlinux(path)
    kernel.check_config(kernel.read_fragment(), (path.parent / "config").read_text())
    assert kernel.resolve_kernel(roots).path == path


# --- the build itself (slow: unpacks the kernel source) -------------------------------------


@pytest.mark.slow
def test_build_stops_before_compiling_when_an_option_is_dropped(
    tmp_path: Path, roots: Roots, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not kernel.SOURCE_TARBALL.exists():
        pytest.skip(f"{kernel.SOURCE_TARBALL} is not installed")
    if os.cpu_count() is None or shutil.which("make") is None:
        pytest.skip("make is not installed")
    bad = tmp_path / "bad.config"
    # The trap DESIGN.md names: EROFS lives under MISC_FILESYSTEMS, which tinyconfig turns off.
    bad.write_text("CONFIG_EROFS_FS=y\n# CONFIG_MISC_FILESYSTEMS is not set\n")
    monkeypatch.setenv(kernel.ENV_FRAGMENT, str(bad))
    r = _empty_cache(tmp_path, roots)
    steps: list[str] = []

    class Record:
        def step(self, text: str) -> None:
            steps.append(text)

        def advance(self, done: int, total: int) -> None:
            raise AssertionError("compiled although the config check failed")

    with pytest.raises(GuestError, match="CONFIG_EROFS_FS=y") as err:
        kernel.build_kernel(r, progress=Record())
    assert "CONFIG_MISC_FILESYSTEMS" not in str(err.value)  # it was meant to be off
    assert steps[-1].startswith("resolving kernel config")
    # Nothing half-made is left: no build directory, no cache entry.
    assert sorted(p.name for p in kernel.kernel_dir(r).iterdir()) == [".lock"]
