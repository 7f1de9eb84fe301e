"""Label and field selectors with the API server's grammar and matching rules.

Label selectors (``k8s.io/apimachinery/pkg/labels``): comma-separated
requirements, all of which must hold: ``key``, ``!key``, ``key=value``,
``key==value``, ``key!=value``, ``key in (a,b)``, ``key notin (a,b)``,
``key>N``, ``key<N``. ``!=`` and ``notin`` also match objects without the label.

Field selectors: ``metadata.name`` and ``metadata.namespace`` with ``=``,
``==`` or ``!=`` (the fields every resource supports); any other field is
rejected, as the API server rejects it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["FieldSelector", "LabelSelector", "SelectorError"]


class SelectorError(ValueError):
    """A selector the API server would answer with 400 Bad Request."""


_KEY = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s*\(\s*({_VALUE}(?:\s*,\s*{_VALUE})*)\s*\)\s*$")
_CMP = re.compile(rf"^\s*({_KEY})\s*(==|=|!=|>|<)\s*({_VALUE})\s*$")
_EXISTS = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside ``( )``."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"unbalanced ')' in {text!r}")
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth:
        raise SelectorError(f"unbalanced '(' in {text!r}")
    parts.append("".join(current))
    return parts


Requirement = Callable[[Mapping[str, str]], bool]


def _requirement(text: str) -> Requirement:
    m = _SET.match(text)
    if m:
        key, op = m.group(1), m.group(2)
        values = frozenset(v.strip() for v in m.group(3).split(","))
        if op == "in":
            return lambda labels: key in labels and labels[key] in values
        return lambda labels: key not in labels or labels[key] not in values
    m = _CMP.match(text)
    if m:
        key, op, value = m.group(1), m.group(2), m.group(3)
        if op in ("=", "=="):
            return lambda labels: labels.get(key) == value
        if op == "!=":
            return lambda labels: labels.get(key) != value
        if not value.isdigit():
            raise SelectorError(f"{text!r}: {op} needs an integer value")
        bound = int(value)

        def compare(labels: Mapping[str, str]) -> bool:
            have = labels.get(key)
            if have is None or not have.lstrip("-").isdigit():
                return False
            return int(have) > bound if op == ">" else int(have) < bound

        return compare
    m = _EXISTS.match(text)
    if m:
        negate, key = m.group(1) == "!", m.group(2)
        if negate:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    raise SelectorError(f"unable to parse requirement {text.strip()!r}")


@dataclass(frozen=True)
class LabelSelector:
    """A parsed label selector; the empty selector matches everything."""

    text: str
    requirements: tuple[Requirement, ...]

    @classmethod
    def parse(cls, text: str | None) -> LabelSelector:
        if text is None or not text.strip():
            return cls("", ())
        return cls(text, tuple(_requirement(part) for part in _split_top_level(text)))

    def matches(self, obj: Mapping[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(req(labels) for req in self.requirements)


_FIELDS = ("metadata.name", "metadata.namespace")
_FIELD = re.compile(r"^\s*([A-Za-z.]+)\s*(==|=|!=)\s*(.*?)\s*$")


@dataclass(frozen=True)
class FieldSelector:
    """A parsed field selector over ``metadata.name`` and ``metadata.namespace``."""

    text: str
    terms: tuple[tuple[str, bool, str], ...]  # (field, equal?, value)

    @classmethod
    def parse(cls, text: str | None) -> FieldSelector:
        if text is None or not text.strip():
            return cls("", ())
        terms = []
        for part in text.split(","):
            m = _FIELD.match(part)
            if m is None:
                raise SelectorError(f"invalid field selector term {part.strip()!r}")
            field_name, op, value = m.groups()
            if field_name not in _FIELDS:
                raise SelectorError(f'field label not supported: {field_name}')
            terms.append((field_name, op != "!=", value))
        return cls(text, tuple(terms))

    def matches(self, obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        for field_name, equal, value in self.terms:
            have = meta.get(field_name.split(".", 1)[1], "")
            if (have == value) != equal:
                return False
        return True
