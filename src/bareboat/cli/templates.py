"""`bareboat template ls|create|rm|prune`: microVM templates (see backends/microvm/template.py).

`create IMAGE` computes the same inputs `bareboat run --isolation microvm IMAGE` would (kernel,
init, the image's EROFS disk, vCPUs, memory, accelerator), so the run finds the template.
Every heavy import happens inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING, Any

from bareboat.cli.common import roots

if TYPE_CHECKING:
    from bareboat.backends.microvm.template import TemplateInputs
    from bareboat.paths import Roots


def template_inputs(r: Roots, ref: str, *, memory: str | None, cpus: str | None) -> TemplateInputs:
    """The inputs of a cold `run --isolation microvm` of `ref` with these sizes."""
    import math

    from bareboat.backends.microvm import rootfs, template, vmspec
    from bareboat.backends.microvm.accel import choose_accel
    from bareboat.backends.microvm.backend import tree_key
    from bareboat.backends.microvm.initbuild import build_initramfs
    from bareboat.backends.microvm.kernel import resolve_kernel
    from bareboat.backends.microvm.qemu import host_tsc_khz
    from bareboat.errors import UsageError
    from bareboat.images.store import ImageStore
    from bareboat.spec.parse import parse_memory

    store = ImageStore(r)
    image = store.ensure(ref)
    tree = store.rootfs(image)
    disk = rootfs.ensure_image(r, tree, key=tree_key(tree))
    linux: dict[str, Any] = {"resources": {}}
    if memory:
        linux["resources"]["memory"] = {"limit": parse_memory(memory)}
    mem = vmspec.memory_for(linux)
    vcpus = 1
    if cpus:
        try:
            vcpus = max(1, math.ceil(float(cpus)))
        except ValueError:
            raise UsageError(f"invalid --cpus {cpus!r}") from None
    return template.TemplateInputs(
        image=disk.key,
        kernel=resolve_kernel(r).path,
        initrd=build_initramfs(r),
        lower=disk.path,
        vcpus=vcpus,
        memory_mib=mem >> 20,
        accel=choose_accel(r).accel,
        tsc_khz=host_tsc_khz(),
    )


def _ls(args: argparse.Namespace) -> int:
    from bareboat.backends.microvm import template

    entries = template.list_templates(roots(args))
    if args.format == "json":
        rows = [
            {
                "key": e.key,
                "path": str(e.path),
                "valid": e.template is not None,
                "error": e.error,
                "stale": e.stale,
                **({"manifest": e.template.manifest.__dict__} if e.template else {}),
            }
            for e in entries
        ]
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'KEY':<14}{'MEMORY':>8}{'VCPUS':>6}  {'CREATED':<20}STATUS")
    for e in entries:
        if e.template is None:
            print(f"{e.key[:12]:<14}{'-':>8}{'-':>6}  {'-':<20}broken: {e.error}")
            continue
        m = e.template.manifest
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m.created))
        mem = f"{m.ram_size >> 20}M"
        status = f"stale: {e.stale}" if e.stale else "ok"
        print(f"{e.key[:12]:<14}{mem:>8}{m.inputs.get('vcpus', '?'):>6}  {created:<20}{status}")
    return 0


def _create(args: argparse.Namespace) -> int:
    from bareboat.backends.microvm import template

    r = roots(args)
    inputs = template_inputs(r, args.image, memory=args.memory, cpus=args.cpus)
    t = template.create_template(r, inputs, replace=args.replace)
    print(t.key)
    return 0


def _rm(args: argparse.Namespace) -> int:
    from bareboat.backends.microvm import template
    from bareboat.errors import UsageError

    r = roots(args)
    missing = [k for k in args.keys if not template.remove_template(r, k)]
    if missing:
        raise UsageError(f"no such template: {', '.join(missing)}")
    return 0


def _prune(args: argparse.Namespace) -> int:
    from bareboat.backends.microvm import template

    for key in template.prune_templates(roots(args), all=args.all):
        print(key)
    return 0


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("template", help="microVM templates (fast start from a snapshot)")
    t = p.add_subparsers(dest="template_command", metavar="COMMAND")

    ls = t.add_parser("ls", help="list templates (broken ones too)")
    ls.add_argument("--format", choices=["table", "json"], default="table")
    ls.set_defaults(func=_ls)

    c = t.add_parser("create", help="boot IMAGE once and save it as a template")
    c.add_argument("image", metavar="IMAGE")
    c.add_argument("-m", "--memory", help="guest memory, as for run (default 256m)")
    c.add_argument("--cpus", help="vCPUs, as for run (default 1)")
    c.add_argument("--replace", action="store_true", help="make it again even if it exists")
    c.set_defaults(func=_create)

    rm = t.add_parser("rm", help="remove templates by key (or unique key prefix)")
    rm.add_argument("keys", nargs="+", metavar="KEY")
    rm.set_defaults(func=_rm)

    pr = t.add_parser("prune", help="remove broken, stale and unfinished templates")
    pr.add_argument("--all", action="store_true", help="remove every template")
    pr.set_defaults(func=_prune)
