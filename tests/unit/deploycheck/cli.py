"""The `colo` command as deploy/ and docs/deploy.md use it: every flag
must exist, unabbreviated and not a hidden test hook, and parse."""

from __future__ import annotations

import argparse
import contextlib
import io
import ipaddress
import re
import shlex

from colo_plane import addresses, cli

PARSER = cli._parser()  # the `colo` command, built as main() builds it


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {opt: a for a in parser._actions for opt in a.option_strings}


def command_parser(argv: list[str]) -> tuple[argparse.ArgumentParser | None, list[str]]:
    """The (sub)parser a command line ends up in, and the words after its name."""
    parser, rest = PARSER, argv
    while rest and (sub := subcommands(parser).get(rest[0])) is not None:
        parser, rest = sub, rest[1:]
    return (None, rest) if parser is PARSER else (parser, rest)


def flag_errors(argv: list[str]) -> list[str]:
    """What is wrong with `colo ARGV`: an unknown command, a flag the command
    does not define (argparse would accept an abbreviation: not here), a
    hidden test flag, or anything argparse itself refuses."""
    parser, rest = command_parser(argv)
    if parser is None:
        return [f"`colo {shlex.join(argv)}`: no such command"]
    known = options(parser)
    errors = []
    for word in rest:
        if word == "--":
            break
        if word.startswith("--"):
            name = word.split("=", 1)[0]
            if name not in known:
                errors.append(f"`{parser.prog}` has no flag {name}")
            elif known[name].help == argparse.SUPPRESS:
                errors.append(f"{name} is a hidden test hook, not for deployment")
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.suppress(SystemExit):
        PARSER.parse_args(argv)
        return errors
    return [*errors, stderr.getvalue().strip().splitlines()[-1]]


def parse(argv: list[str]) -> argparse.Namespace:
    assert not (errors := flag_errors(argv)), errors
    return PARSER.parse_args(argv)


def inline_commands(text: str) -> list[list[str]]:
    """`colo ...` in backquotes, as prose names commands."""
    return [shlex.split(m)[1:] for m in re.findall(r"`(colo [^`]+)`", text)]


def port(address: str) -> int:
    return addresses.parse(address)[1]


def host(address: str) -> str:
    return addresses.parse(address)[0]


def is_loopback(name: str) -> bool:
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_wildcard(name: str) -> bool:
    return name in ("0.0.0.0", "::", "")
