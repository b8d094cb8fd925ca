"""
Groups, sans-IO: the names a many-to-one client may join, and reading them from a HELLO.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from netmodels.core.frames import Hello

__all__ = ["GROUP_NAME", "MAX_GROUPS", "check_groups"]


#: A group name: 1 to 64 letters, digits, ``_``, ``.`` or ``-``, starting with a letter or digit.
GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


#: The most groups one client may declare.
MAX_GROUPS = 32


def check_groups(groups: Iterable[object]) -> str | None:
    """``None`` if ``groups`` is a valid list of group names, else what is wrong with it."""
    seen: set[str] = set()
    for name in groups:
        if not isinstance(name, str) or GROUP_NAME.fullmatch(name) is None:
            return (
                f"bad group name {name!r}: 1 to 64 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit"
            )
        if name in seen:
            return f"group {name!r} given twice"
        seen.add(name)
    if len(seen) > MAX_GROUPS:
        return f"{len(seen)} groups, more than the limit of {MAX_GROUPS}"
    return None


def _hello_groups(hello: Hello) -> tuple[str, ...]:
    groups = hello.extra.get("groups", [])
    return tuple(groups) if isinstance(groups, list) else ()
