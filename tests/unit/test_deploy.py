"""deploy/ kept true to the code: what operators need is there, every YAML
file parses, the image builds what the manifests run, and every `colo`
command docs/deploy.md shows exists.  Kubernetes, systemd and the
Prometheus rules have files of their own (test_deploy_*.py); the helpers
and the real tools they run are in deploycheck/."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from deploycheck import DEPLOY, DEPLOY_DOC, KUBE, ROOT, RULES, rel
from deploycheck.cli import command_parser, flag_errors, inline_commands, options
from deploycheck.kube import built, container, containers
from deploycheck.systemd import UNITS


def _yaml_files() -> list[Path]:
    return sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])


def test_deploy_has_what_operators_need() -> None:
    for path in [
        DEPLOY / "Containerfile",
        KUBE / "kustomization.yaml",
        KUBE / "base" / "kustomization.yaml",
        KUBE / "prometheus-operator" / "kustomization.yaml",
        UNITS["coordinator"],
        UNITS["agent"],
        RULES,
        DEPLOY_DOC,
    ]:
        assert path.is_file(), f"{rel(path)} is missing"


@pytest.mark.parametrize("path", _yaml_files(), ids=rel)
def test_every_yaml_file_parses(path: Path) -> None:
    docs = list(yaml.safe_load_all(path.read_text()))
    assert docs, f"{rel(path)} is empty"
    for doc in docs:
        assert isinstance(doc, dict), f"{rel(path)}: a document that is not a mapping"


def test_containerfile_builds_what_the_manifests_run() -> None:
    text = (DEPLOY / "Containerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert len(froms) == 2, "a build stage and a runtime stage"
    assert "python:3.11-slim-bookworm" in text
    build, runtime = re.split(r"^FROM\s.*$", text, flags=re.MULTILINE)[1:3]
    assert "libxen-dev" in build and "gcc" in build
    assert not re.search(r"\b(gcc|libxen-dev|build-essential)\b", runtime), "no compiler at run time"
    assert re.search(r"^USER\s+10001", runtime, re.MULTILINE), "the image runs as the non-root user"
    assert re.search(r'^ENTRYPOINT\s+\["colo"\]', runtime, re.MULTILINE)
    assert container(built(), "coordinator").pod["spec"]["securityContext"]["runAsUser"] == 10001
    ports = {int(p) for line in re.findall(r"^EXPOSE\s+(.*)$", runtime, re.MULTILINE) for p in line.split()}
    assert ports == {port for c in containers(built()) for port in c.ports.values()}


# -- docs/deploy.md -----------------------------------------------------------------


def _doc_commands() -> list[list[str]]:
    """`colo ...` command lines in the doc's code blocks (a line continued
    with a backslash joined; up to a shell separator or comment), and in
    its prose."""
    text = DEPLOY_DOC.read_text()
    commands = inline_commands(text)
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        for raw in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\$\(?\{?[A-Za-z_]+\}?\)?", "x", raw.split("#")[0])
            for part in re.split(r";|&&|\|\||\|", line):
                if m := re.search(r"(?:^|[\s/])colo\s+([a-z].*)", part):
                    commands.append(shlex.split(m.group(1)))
    return commands


def test_doc_commands_use_real_flags() -> None:
    commands = _doc_commands()
    assert len(commands) >= 5
    problems = []
    for argv in commands:
        parser, rest = command_parser(argv)
        if parser is None:
            problems.append(f"colo {shlex.join(argv)}: no such command")
            continue
        known = options(parser)
        problems += [
            f"colo {shlex.join(argv)}: no flag {w.split('=')[0]}"
            for w in rest
            if w.startswith("--") and w.split("=")[0] not in known
        ]
    assert problems == []


def test_readme_links_the_deploy_doc() -> None:
    assert "(docs/deploy.md)" in (ROOT / "README.md").read_text()


def test_flag_check_catches_unknown_abbreviated_hidden_and_malformed_flags() -> None:
    assert flag_errors(["agent", "--host-id=h", "--no-such-flag=1"])
    assert flag_errors(["agent", "--host-id=h", "--metrics=0.0.0.0:1"]), (
        "argparse would take the abbreviation"
    )
    assert flag_errors(["agent", "--host-id=h", "--test-send-only-a"])
    assert flag_errors(["coordinator", "--heartbeat-timeout=soon"])
    assert flag_errors(["agent"]), "--host-id is required"
    assert flag_errors(["coordinatorr"])
    assert flag_errors(["coordinator", "--listen=0.0.0.0:7000"]) == []
