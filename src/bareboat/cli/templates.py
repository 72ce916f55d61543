"""`bareboat template ls|create|rm|prune`: microVM templates (see engine/vmtemplates.py).

`create IMAGE` keys its template as `bareboat run --isolation microvm IMAGE` with the same
`-m` and `--cpus` would look for it, so the run finds it. Every heavy import happens inside
the handlers.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from bareboat.cli.common import roots


def _ls(args: argparse.Namespace) -> int:
    from bareboat.engine import vmtemplates

    entries = vmtemplates.list_templates(roots(args))
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
    from bareboat.engine import vmtemplates
    from bareboat.spec.parse import parse_cpus, parse_memory

    # Read as `run` reads them, before the image is pulled or its disk built.
    memory = parse_memory(args.memory) if args.memory else None
    cpus = parse_cpus(args.cpus) if args.cpus else None
    t = vmtemplates.create_template(
        roots(args), args.image, memory=memory, cpus=cpus, replace=args.replace
    )
    print(t.key)
    return 0


def _rm(args: argparse.Namespace) -> int:
    from bareboat.engine import vmtemplates
    from bareboat.errors import UsageError

    missing = vmtemplates.remove_templates(roots(args), args.keys)
    if missing:
        raise UsageError(f"no such template: {', '.join(missing)}")
    return 0


def _prune(args: argparse.Namespace) -> int:
    from bareboat.engine import vmtemplates

    for key in vmtemplates.prune_templates(roots(args), all=args.all):
        print(key)
    return 0


def register(sub: argparse._SubParsersAction[Any], only: str | None = None) -> None:
    """Add this group's one command to the `bareboat` parser (the one `only` can name)."""
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
