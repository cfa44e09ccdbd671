"""The Prometheus rules against the code, with promtool doing the reading.

What is ours here is lexical: the selectors a rule's expression names and
the labels it groups by (promql.py), and every series colo_plane/metrics.py
exposes (series.py).  From them `derived_suite` writes a promtool
test suite that Prometheus evaluates: each selector must match the series
the code exposes (its name, its labels, the label values the code sets;
recording rules evaluated from those series as Prometheus would), each
grouping label must be one a selected series carries, and each $labels.X an
alert's text names must be a label of the alert where the committed tests
fire it."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from deploycheck import RULE_TESTS, RULES, load, tools
from deploycheck.promql import MATCHER, Selector, selectors
from deploycheck.series import LABEL_VALUES, METRICS, SYNTHETIC, TARGET_LABELS, code_series, job_of


def rules(path: Path = RULES) -> list[dict[str, Any]]:
    return [rule for group in load(path)["groups"] for rule in group["rules"]]


def name(rule: dict[str, Any]) -> str:
    return str(rule.get("alert") or rule.get("record"))


def _exists(expr: str) -> dict[str, Any]:
    return {
        "expr": f"count({expr}) > bool 0",
        "eval_time": "10m",
        "exp_samples": [{"labels": "{}", "value": 1}],
    }


def _values(matchers: tuple[tuple[str, str, str], ...]) -> list[tuple[str, str, str]]:
    """label="value" for each value a negative matcher or an alternation
    (a=~"x|y") names: each must be a value the code sets."""
    out = []
    for label, op, value in matchers:
        alternatives = value.split("|")
        if op == "!=":
            out.append((label, "=", value))
        elif op in ("=~", "!~") and all(re.escape(a) == a for a in alternatives):
            out += [(label, "=", a) for a in alternatives]
    return out


def code_checks(rule_list: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each selector of each rule: it matches what the code exposes, and
    so does each value of its matchers alone (a value in an alternation or
    a negative matcher must be one the code sets); for each label the rule
    groups or matches on: one of its selected series carries it."""
    checks = []
    for rule in rule_list:
        found, grouping = selectors(rule["expr"])
        for sel in found:
            checks.append(_exists(sel.text()))
            checks += [_exists(Selector(sel.metric, (m,)).text()) for m in _values(sel.matchers)]
        for label in grouping:
            carrying = " or ".join(sel.text((label, "!=", "")) for sel in found)
            if carrying:
                checks.append(_exists(carrying))
    return checks


# -- the alerts' $labels where they fire ------------------------------------------------

_FIRING = re.compile(r'alertname="([A-Za-z0-9_]+)"')


def template_labels(rule: dict[str, Any]) -> set[str]:
    text = " ".join(str(v) for v in {**rule.get("annotations", {}), **rule.get("labels", {})}.values())
    return set(re.findall(r"\$labels\.([A-Za-z_][A-Za-z0-9_]*)", text))


def firing(case: dict[str, Any]) -> list[tuple[str, str]]:
    """(alert, eval_time) a committed case expects firing."""
    out = []
    for test in case.get("promql_expr_test", []):
        if "ALERTS" in test["expr"]:
            out += [(a, test["eval_time"]) for s in test["exp_samples"] for a in _FIRING.findall(s["labels"])]
    for test in case.get("alert_rule_test", []):
        if test.get("exp_alerts"):
            out.append((test["alertname"], test["eval_time"]))
    return out


def template_checks(case: dict[str, Any], rule_list: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """At each time CASE fires an alert: no firing instance lacks a label its text names."""
    labels = {r["alert"]: template_labels(r) for r in rule_list if "alert" in r}
    return [
        {
            "expr": f'ALERTS{{alertname="{alert}",alertstate="firing",{label}=""}}',
            "eval_time": at,
            "exp_samples": [],
        }
        for alert, at in firing(case)
        for label in sorted(labels.get(alert, ()))
    ]


# -- the suite -------------------------------------------------------------------------


def derived_suite(rules_path: Path, directory: Path, committed: bool = True) -> Path:
    """A promtool test file in DIRECTORY over a copy of RULES_PATH: the code
    checks in a case of their own, the template checks in each committed
    case (whose own tests are kept when COMMITTED)."""
    rule_list = rules(rules_path)
    (directory / RULES.name).write_text(rules_path.read_text())
    suite = copy.deepcopy(load(RULE_TESTS))
    cases = []
    for case in suite["tests"]:
        checks = template_checks(case, rule_list)
        kept = case if committed else {k: v for k, v in case.items() if not k.endswith("_test")}
        if checks or committed:
            cases.append({**kept, "promql_expr_test": [*kept.get("promql_expr_test", []), *checks]})
    cases.append(
        {"interval": "1m", "input_series": code_series(), "promql_expr_test": code_checks(rule_list)}
    )
    suite["tests"] = cases
    path = directory / "derived.test.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def promtool_problems(rules_path: Path, directory: Path, committed: bool = True) -> str:
    """What promtool says of the derived suite (its quoting undone): empty
    when every check holds."""
    suite = derived_suite(rules_path, directory, committed)
    out = tools.run(["promtool", "test", "rules", suite.name], cwd=directory)
    return "" if out.returncode == 0 else (out.stdout + out.stderr).replace('\\"', '"')


# -- the committed tests' input ----------------------------------------------------------

_SERIES = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)\{(.*)\}$")


def input_problems(suite: dict[str, Any]) -> list[str]:
    """Input series of a promtool suite that the code would not expose:
    another name, other labels, or a label value the code never sets."""
    problems = []
    for case in suite["tests"]:
        for item in case.get("input_series", []):
            m = _SERIES.match(item["series"])
            assert m, f"cannot read input series {item['series']!r}"
            series, labels = m.group(1), dict((k, v) for k, _, v in MATCHER.findall(m.group(2)))
            want = {**METRICS, **SYNTHETIC}.get(series)
            if want is None:
                problems.append(f"{series}: no such series in colo_plane/metrics.py")
                continue
            if set(labels) != want | TARGET_LABELS:
                problems.append(
                    f"{item['series']}: labels {sorted(labels)}, the code's {sorted(want | TARGET_LABELS)}"
                )
            problems += [
                f"{item['series']}: {k}={v!r} is not a value the code sets"
                for k, v in labels.items()
                if k in LABEL_VALUES and v not in LABEL_VALUES[k]
            ]
    return problems


# -- each daemon's series, and the rules' jobs ----------------------------------------


def scoping_problems(rule_list: list[dict[str, Any]]) -> list[str]:
    """Selectors of one daemon's series that do not name its job."""
    problems = []
    for rule in rule_list:
        for sel in selectors(rule["expr"])[0]:
            job = job_of(sel.metric)
            if job is not None and ("job", "=", job) not in sel.matchers:
                problems.append(f'{name(rule)}: {sel.metric} without job="{job}"')
    return problems
