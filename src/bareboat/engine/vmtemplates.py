"""MicroVM templates for the front ends (`bareboat template ls|create|rm|prune`).

The front ends reach the microVM backend's templates (backends/microvm/template.py) only
through here. `create` keys its template by the plan of the VM that `bareboat run
--isolation microvm IMAGE` with the same `--memory` and `--cpus` boots: the spec builder
makes a bundle of those options, the backend plans it as it plans that run (vmplan), so
the run finds the template, and sizes the run refuses are refused here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bareboat.backends.microvm.template import Entry, Template, TemplateInputs
    from bareboat.paths import Roots

# The container id of the bundle a template is planned from: no container has it (theirs are
# 64 hex digits), and it is a valid hostname.
PLAN_ID = "template"


def template_inputs(
    roots: Roots, ref: str, *, memory: int | None = None, cpus: float | None = None
) -> TemplateInputs:
    """The inputs of the template a cold `run --isolation microvm` of `ref` with these sizes
    looks for (the image pulled and its disk built if need be)."""
    from bareboat.backends.microvm.backend import MicrovmBackend
    from bareboat.images.store import ImageStore
    from bareboat.spec.builder import build_spec
    from bareboat.spec.options import Isolation, RunOptions
    from bareboat.spec.users import User

    store = ImageStore(roots)
    image = store.ensure(ref)
    tree = store.rootfs(image)
    # The workload and its user come with START, once a clone has resumed: no part of a
    # template. So an image without a command gets one here, and its passwd is not read.
    options = RunOptions(
        isolation=Isolation.MICROVM, memory=memory, cpus=cpus, entrypoint=("true",)
    )
    config = build_spec(image.config, options, rootfs=tree, container_id=PLAN_ID, user=User(0, 0))
    return MicrovmBackend(roots).template_inputs(config, tree)


def create_template(
    roots: Roots,
    ref: str,
    *,
    memory: int | None = None,
    cpus: float | None = None,
    replace: bool = False,
) -> Template:
    """Boot `ref` once as `run` would and save it as a template (the one there is, unless
    `replace`)."""
    from bareboat.backends.microvm import template

    inputs = template_inputs(roots, ref, memory=memory, cpus=cpus)
    return template.create_template(roots, inputs, replace=replace)


def list_templates(roots: Roots) -> list[Entry]:
    """Every template directory, broken, stale and unfinished ones too."""
    from bareboat.backends.microvm import template

    return template.list_templates(roots)


def remove_templates(roots: Roots, keys: Sequence[str]) -> list[str]:
    """Remove the templates named by key or unique key prefix; the keys that named none."""
    from bareboat.backends.microvm import template

    return [k for k in keys if not template.remove_template(roots, k)]


def prune_templates(roots: Roots, *, all: bool = False) -> list[str]:
    """Remove broken, stale and unfinished templates (every one with `all`); their keys."""
    from bareboat.backends.microvm import template

    return template.prune_templates(roots, all=all)
