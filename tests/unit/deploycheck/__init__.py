"""Helpers of the deploy tests (tests/unit/test_deploy*.py): where deploy/
is, the real tools that read it (tools.py), and what no tool reads for us:
the `colo` command's flags (cli.py), a container's argv as the kubelet
expands it (kube.py), a unit's ExecStart as systemd expands it
(systemd.py), and which series the rules select (rules.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"
PROMETHEUS = DEPLOY / "prometheus"
RULES = PROMETHEUS / "colo-rules.yaml"
RULE_TESTS = PROMETHEUS / "colo-rules.test.yaml"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def load(path: Path) -> Any:
    """The one YAML document of PATH."""
    (doc,) = yaml.safe_load_all(path.read_text())
    return doc
