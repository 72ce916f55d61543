"""Docker-style names (`adjective_scientist`) and 64-hex container ids."""

from __future__ import annotations

import os
import re

from bareboat.errors import UsageError

_ADJECTIVES = (  # noqa: SIM905 (a word list reads better as text)
    "admiring agile bold brave calm clever dazzling eager elegant fervent focused gallant "
    "gentle happy hopeful jolly keen kind lucid merry modest nifty noble optimistic quirky "
    "relaxed serene sharp stoic sweet tender trusting upbeat vibrant wizardly zealous"
).split()
_NAMES = (  # noqa: SIM905
    "babbage bohr curie darwin dijkstra einstein euler faraday fermi feynman galileo gauss "
    "hopper hypatia kepler knuth lamarr lovelace maxwell meitner newton noether pascal "
    "ritchie shannon tesla thompson torvalds turing wozniak"
).split()

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")
ID_RE = re.compile(r"^[0-9a-f]{64}$")


def new_id() -> str:
    return os.urandom(32).hex()  # `secrets` would cost an import of random and hashlib


def _pick(words: list[str]) -> str:
    return words[int.from_bytes(os.urandom(4), "big") % len(words)]


def random_name() -> str:
    return f"{_pick(_ADJECTIVES)}_{_pick(_NAMES)}"


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise UsageError(f"invalid container name {name!r}: use [a-zA-Z0-9][a-zA-Z0-9_.-]*")
    return name
