"""`bareboat` commands: pull, images, inspect, rmi, tag, load, save, and `image ...`.

Handlers import the store inside their bodies: `bareboat --help` never pays for httpx/msgspec.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bareboat.cli.common import roots

if TYPE_CHECKING:
    from collections.abc import Callable

    from bareboat.images.model import Image
    from bareboat.images.store import ImageStore
    from bareboat.paths import Roots


def _store(args: argparse.Namespace) -> ImageStore:
    from bareboat.images.store import ImageStore

    return ImageStore(roots(args))


def human_size(n: int) -> str:
    """docker's sizes: SI units, three significant digits (4.26MB)."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.3g}{unit}"
        size /= 1000
    raise AssertionError


def inspect_image(root: Roots, ref: str) -> dict[str, Any]:
    """The `inspect` JSON of one image (raises ImageNotFound); `inspect` of containers reuses it."""
    from bareboat.images.store import ImageStore

    return image_json(ImageStore(root).get(ref))


def image_json(img: Image) -> dict[str, Any]:
    from bareboat.images.reference import parse_reference

    tags = [n for n in img.names if "@" not in n]
    repo_digests = sorted(
        {f"{parse_reference(n).name}@{img.digest}" for n in img.names}
        | {n for n in img.names if "@" in n}
    )
    c = img.config
    return {
        "Id": img.id,
        "Digest": img.digest,
        "RepoTags": tags,
        "RepoDigests": repo_digests,
        "Architecture": c.architecture,
        "Os": c.os,
        "Size": img.size,
        "Config": {
            "Entrypoint": list(c.entrypoint) or None,
            "Cmd": list(c.cmd) or None,
            "Env": list(c.env),
            "WorkingDir": c.workdir,
            "User": c.user,
            "ExposedPorts": {p: {} for p in c.exposed_ports},
            "Labels": c.labels,
            "StopSignal": c.stop_signal,
        },
        "RootFS": {"Type": "layers", "Layers": [x.diff_id for x in img.layers]},
        "Layers": [
            {"Digest": x.digest, "MediaType": x.media_type, "Size": x.size} for x in img.layers
        ],
    }


# --- handlers ---------------------------------------------------------------------------


def cmd_pull(args: argparse.Namespace) -> int:
    from bareboat.images.auth import Credentials

    creds = Credentials.parse(args.user) if args.user else None
    img = _store(args).pull(
        args.ref,
        platform=args.platform,
        insecure=args.insecure,
        auth=creds,
        progress=not args.quiet,
    )
    if not args.quiet:
        print(f"Digest: {img.digest}")
        print(f"Image: {img.id}")
    else:
        print(img.id)
    return 0


def _rows(store: ImageStore, show_all: bool) -> list[tuple[str, str, str, str, str]]:
    from bareboat.images.reference import parse_reference

    rows = []
    for img in store.list():
        named = [n for n in img.names if "@" not in n]
        size = human_size(img.size)
        if not named:
            if img.names or show_all:
                repo = parse_reference(img.names[0]).familiar_name if img.names else "<none>"
                rows.append((repo, "<none>", img.short_id, size, img.id))
            continue
        for n in named:
            r = parse_reference(n)
            rows.append((r.familiar_name, r.tag, img.short_id, size, img.id))
    return sorted(rows)


def cmd_images(args: argparse.Namespace) -> int:
    rows = _rows(_store(args), args.all)
    if args.quiet:
        seen = []
        for row in rows:
            if row[2] not in seen:
                seen.append(row[2])
        for short_id in seen:
            print(short_id)
        return 0
    table = [("REPOSITORY", "TAG", "IMAGE ID", "SIZE")] + [r[:4] for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(3)]
    for r in table:
        print("   ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "   " + r[3])
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    root = roots(args)
    out = [inspect_image(root, ref) for ref in args.refs]
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


def cmd_rmi(args: argparse.Namespace) -> int:
    from bareboat.images.lookup import forget_views

    store = _store(args)
    try:
        for ref in args.refs:
            for event in store.remove(ref, force=args.force):
                print(event)
    finally:
        forget_views(store.root)
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    _store(args).tag(args.src, args.dst)
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    for img in _store(args).load(Path(args.input)):
        print(f"Loaded image: {', '.join(img.names) or img.id}")
    return 0


def cmd_save(args: argparse.Namespace) -> int:
    _store(args).save(list(args.refs), Path(args.output))
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from bareboat.images.lookup import forget_views

    store = _store(args)
    r = store.prune()
    forget_views(store.root)
    print(
        f"Removed {r.images} images, {r.blobs} blobs ({human_size(r.bytes)}), "
        f"{r.rootfs} root filesystems, {r.temp} temporary files"
    )
    return 0


# --- parsers ----------------------------------------------------------------------------


def _add_pull(sub: argparse._SubParsersAction[Any], name: str) -> None:
    p = sub.add_parser(name, help="pull an image from a registry")
    p.add_argument("--platform", help="os/arch[/variant] (default: the host's)")
    p.add_argument("--insecure", action="store_true", help="allow plain HTTP and bad TLS")
    p.add_argument("--user", "-u", help="registry credentials USER:PASSWORD")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress; print the id")
    p.add_argument("ref", metavar="REF")
    p.set_defaults(func=cmd_pull)


def _add_ls(sub: argparse._SubParsersAction[Any], name: str) -> None:
    p = sub.add_parser(name, help="list images")
    p.add_argument("--all", "-a", action="store_true", help="include unnamed images")
    p.add_argument("--quiet", "-q", action="store_true", help="only ids")
    p.set_defaults(func=cmd_images)


def _add_inspect(sub: argparse._SubParsersAction[Any], name: str) -> None:
    p = sub.add_parser(name, help="show an image as JSON")
    p.add_argument("refs", metavar="REF", nargs="+")
    p.set_defaults(func=cmd_inspect)


def _add_rm(sub: argparse._SubParsersAction[Any], name: str) -> None:
    p = sub.add_parser(name, help="remove images")
    p.add_argument("--force", "-f", action="store_true", help="remove every name of the image")
    p.add_argument("refs", metavar="REF", nargs="+")
    p.set_defaults(func=cmd_rmi)


def _add_tag(sub: argparse._SubParsersAction[Any], name: str) -> None:
    p = sub.add_parser(name, help="give an image another name")
    p.add_argument("src", metavar="SOURCE")
    p.add_argument("dst", metavar="TARGET")
    p.set_defaults(func=cmd_tag)


def _add_load(sub: argparse._SubParsersAction[Any], name: str) -> None:
    p = sub.add_parser(name, help="load images from a docker-archive or OCI layout")
    p.add_argument("--input", "-i", required=True, help="tar file or OCI layout directory")
    p.set_defaults(func=cmd_load)


def _add_save(sub: argparse._SubParsersAction[Any], name: str) -> None:
    p = sub.add_parser(name, help="save images as an OCI layout (a tar if PATH ends .tar)")
    p.add_argument("--output", "-o", required=True)
    p.add_argument("refs", metavar="REF", nargs="+")
    p.set_defaults(func=cmd_save)


def register(sub: argparse._SubParsersAction[Any], only: str | None = None) -> None:
    """Add this group's commands, or only the command `only`, to the `bareboat` parser."""
    for name, add in _COMMANDS.items():
        if only is None or name == only:
            add(sub)


def _add_image_group(sub: argparse._SubParsersAction[Any]) -> None:
    image = sub.add_parser("image", help="manage images")
    isub = image.add_subparsers(dest="image_command", metavar="COMMAND")
    _add_pull(isub, "pull")
    _add_ls(isub, "ls")
    _add_inspect(isub, "inspect")
    _add_rm(isub, "rm")
    _add_tag(isub, "tag")
    _add_load(isub, "load")
    _add_save(isub, "save")
    p = isub.add_parser("prune", help="remove unnamed images and unreferenced blobs")
    p.set_defaults(func=cmd_prune)


_COMMANDS: dict[str, Callable[[argparse._SubParsersAction[Any]], None]] = {
    "pull": lambda sub: _add_pull(sub, "pull"),
    "images": lambda sub: _add_ls(sub, "images"),
    "inspect": lambda sub: _add_inspect(sub, "inspect"),
    "rmi": lambda sub: _add_rm(sub, "rmi"),
    "tag": lambda sub: _add_tag(sub, "tag"),
    "load": lambda sub: _add_load(sub, "load"),
    "save": lambda sub: _add_save(sub, "save"),
    "image": _add_image_group,
}
