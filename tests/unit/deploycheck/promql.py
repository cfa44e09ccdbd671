"""What a PromQL expression names, read lexically: its series selectors
(name and matchers) and the labels it groups or matches on.  Prometheus
itself (promtool) does the evaluating; this only finds what to ask it."""

from __future__ import annotations

import re
from dataclasses import dataclass

_TOKEN = re.compile(
    r"""(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
      | (?P<matchers>\{[^}]*\})
      | (?P<range>\[[^\]]*\])
      | (?P<number>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?(?:ms|[smhdwy])?)
      | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
      | (?P<space>\s+)
      | (?P<op>.)""",
    re.VERBOSE | re.DOTALL,
)
MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = GROUPING | {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[tuple[str, str, str], ...]  # (label, op, value)

    def text(self, *extra: tuple[str, str, str]) -> str:
        inner = ",".join(f'{label}{op}"{value}"' for label, op, value in (*self.matchers, *extra))
        return f"{self.metric}{{{inner}}}"


def selectors(expr: str) -> tuple[list[Selector], list[str]]:
    """The series selectors EXPR names, and the labels it groups or matches
    on (by, without, on, ignoring, group_left/right)."""
    tokens = [(m.lastgroup, m.group(0)) for m in _TOKEN.finditer(expr) if m.lastgroup != "space"]
    found: list[Selector] = []
    grouping: list[str] = []
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        after = tokens[i + 1] if i + 1 < len(tokens) else ("end", "")
        i += 1
        if kind != "ident":
            continue
        if text in GROUPING and after[1] == "(":
            while i < len(tokens) and tokens[i][1] != ")":
                if tokens[i][0] == "ident":
                    grouping.append(tokens[i][1])
                i += 1
        elif text in KEYWORDS or after[1] == "(" or after[1] in ("by", "without"):
            continue  # a keyword, a function or an aggregation
        else:
            block = after[1] if after[0] == "matchers" else ""
            found.append(Selector(text, tuple(MATCHER.findall(block))))
    return found, grouping
