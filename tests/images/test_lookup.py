"""The image lookup of `run` (images/lookup.py): a named image found from the store's files and
the view kept of it is the image the store itself gives, and anything else goes to the store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bareboat.images import lookup
from bareboat.images.lookup import Images, find
from bareboat.images.store import ImageStore
from bareboat.paths import Roots


@pytest.fixture
def store(roots: Roots, busybox_layout: Path) -> ImageStore:
    store = ImageStore(roots)
    store.load(busybox_layout)
    return store


def _name(store: ImageStore) -> str:
    (image,) = store.list()
    return image.names[0]


def test_a_kept_view_gives_the_stores_image(store: ImageStore, roots: Roots) -> None:
    name = _name(store)
    assert find(store.root, name) is None  # nothing kept yet: the store answers
    images = Images(roots)
    first = images.ensure(name)
    assert first == store.get(name)
    assert find(store.root, name) == first
    # the forms of the name that the store resolves to the same entry
    short = name.removeprefix("docker.io/library/").removesuffix(":latest")
    assert find(store.root, short) == first
    assert find(store.root, f"{name}@{first.digest}") == first
    assert images.rootfs(first) == store.rootfs(first)


def test_what_the_view_cannot_answer_goes_to_the_store(store: ImageStore, roots: Roots) -> None:
    name = _name(store)
    image = Images(roots).ensure(name)
    assert find(store.root, image.id.split(":")[1][:12]) is None  # an id prefix
    assert find(store.root, "no/such:image") is None
    assert find(store.root, "NOT A REFERENCE") is None
    view = store.root / lookup.VIEWS / f"{image.digest.split(':')[1]}.json"
    view.write_text('{"id": 1')  # torn
    assert find(store.root, name) is None
    assert Images(roots).ensure(name) == image  # through the store, and kept again
    assert find(store.root, name) == image


def test_a_removed_image_is_not_found_and_its_view_goes(store: ImageStore, roots: Roots) -> None:
    name = _name(store)
    image = Images(roots).ensure(name)
    store.remove(name)
    assert find(store.root, name) is None
    views = store.root / lookup.VIEWS
    assert list(views.iterdir())
    lookup.forget_views(store.root)
    assert not list(views.iterdir())
    assert image.digest not in {i.digest for i in store.list()}


def test_the_lookup_of_a_kept_image_imports_no_decoder(store: ImageStore, roots: Roots) -> None:
    name = _name(store)
    store.rootfs(Images(roots).ensure(name))  # unpacked once, as by a first run
    code = (
        "import sys; from bareboat.images.lookup import Images; from bareboat.paths import Roots;"
        f"from pathlib import Path; i = Images(Roots(Path({str(roots.root)!r}),"
        f" Path({str(roots.state)!r}), Path({str(roots.cache)!r})));"
        f"img = i.ensure({name!r}); i.rootfs(img);"
        "print(sorted(m for m in ('msgspec', 'bareboat.images.store', 'bareboat.images.wire')"
        " if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
