"""What the deploy tests read of a unit file that `systemd-analyze verify`
(tools.py) only checks: its settings, and ExecStart= as systemd expands it
with the example environment (colo.env), for the `colo` flags it passes."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from deploycheck import SYSTEMD, rel

UNITS = {"coordinator": SYSTEMD / "colo-coordinator.service", "agent": SYSTEMD / "colo-agent.service"}
SPECIFIERS = {"%l": "xen-a", "%H": "xen-a.example", "%%": "%"}
Unit = dict[str, list[tuple[str, str]]]


def unit(path: Path) -> Unit:
    """A unit file: section -> [(key, value)] in order (keys repeat)."""
    sections: Unit = {}
    current: list[tuple[str, str]] = []
    logical = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith(("#", ";"))):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        line, logical = logical + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not key=value: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def setting(u: Unit, key: str, section: str = "Service") -> str:
    values = [v for k, v in u.get(section, []) if k == key]
    assert values, f"no {key}= in [{section}]"
    return values[-1]


def _env_file(path: Path) -> dict[str, str]:
    env = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=value: {line!r}"
        env[key.strip()] = value.strip().strip('"').strip("'")
    return env


def _unit_env(u: Unit) -> dict[str, str]:
    """Environment= then EnvironmentFile= (the file wins, as in systemd),
    the file read from deploy/systemd by its name."""
    env: dict[str, str] = {}
    for key, value in u["Service"]:
        if key == "Environment":
            for word in shlex.split(value):
                name, _, val = word.partition("=")
                for spec, sample in SPECIFIERS.items():
                    val = val.replace(spec, sample)
                env[name] = val
    for key, value in u["Service"]:
        if key == "EnvironmentFile":
            local = SYSTEMD / Path(value.lstrip("-")).name
            assert local.exists(), f"EnvironmentFile={value}: no example {rel(local)}"
            env.update(_env_file(local))
    return env


def exec_argv(u: Unit, where: str) -> list[str]:
    """ExecStart= with systemd's variable rules: ${VAR} substitutes in place,
    a word that is only $VAR is split on whitespace (and vanishes if empty)."""
    env = _unit_env(u)
    words = []
    for word in shlex.split(setting(u, "ExecStart")):
        if m := re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word):
            assert m.group(1) in env, f"{where}: ${m.group(1)} is set nowhere"
            words += env[m.group(1)].split()
            continue

        def sub(m: re.Match[str]) -> str:
            assert m.group(1) in env, f"{where}: ${{{m.group(1)}}} is set nowhere"
            return env[m.group(1)]

        words.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", sub, word))
    assert words[0].endswith("/colo"), f"{where}: ExecStart runs {words[0]}, not colo"
    return words[1:]


def daemon_argv(daemon: str) -> list[str]:
    path = UNITS[daemon]
    return exec_argv(unit(path), path.name)


def seconds(text: str) -> float:
    total = 0.0
    for number, suffix in re.findall(r"(\d+(?:\.\d+)?)\s*(ms|min|s|m|h)?", text):
        total += float(number) * {"ms": 0.001, "": 1, "s": 1, "min": 60, "m": 60, "h": 3600}[suffix]
    return total
