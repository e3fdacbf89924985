"""The console scripts (setup.py), their argument parsers and the deprecated spellings they still
accept: read from the code, so the alias and docs tests follow every new alias by themselves."""

from __future__ import annotations

import argparse
import importlib
import re
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Alias:
    """``old`` is a deprecated spelling of ``new`` in console script ``script``."""

    script: str
    old: str
    new: str
    dest: str
    takes_value: bool


def console_scripts() -> dict[str, str]:
    """Console script name -> ``module:function``, as setup.py declares them."""
    text = (REPO_ROOT / "setup.py").read_text()
    return dict(re.findall(r'"([\w-]+) = ([\w.]+:\w+)"', text))


def tool_parsers() -> dict[str, argparse.ArgumentParser]:
    """The argparse parser of every console script that has a ``build_parser`` (the tools)."""
    parsers = {}
    for script, target in console_scripts().items():
        module = importlib.import_module(target.split(":")[0])
        if hasattr(module, "build_parser"):
            parsers[script] = module.build_parser()
    return parsers


def _is_alias(action: argparse.Action) -> bool:
    # add_deprecated_alias's hidden action (tools/arguments.py)
    return type(action).__name__ == "Alias" and action.help == argparse.SUPPRESS


def deprecated_aliases(parsers: dict[str, argparse.ArgumentParser] | None = None) -> list[Alias]:
    """Every deprecated option spelling of every tool, with the current option it stands for."""
    aliases = []
    for script, parser in (parsers or tool_parsers()).items():
        for action in parser._actions:
            if not _is_alias(action):
                continue
            current = [a for a in parser._actions if a.dest == action.dest and not _is_alias(a)]
            assert current, f"{script}: {action.option_strings} is an alias of nothing"
            new = max(current[0].option_strings, key=len)
            for old in action.option_strings:
                aliases.append(Alias(script, old, new, action.dest, action.nargs != 0))
    return aliases


def current_options(parsers: dict[str, argparse.ArgumentParser] | None = None) -> set[str]:
    """Every option spelling some tool accepts as current (not deprecated)."""
    return {
        option
        for parser in (parsers or tool_parsers()).values()
        for action in parser._actions
        if not _is_alias(action)
        for option in action.option_strings
    }


def deprecated_node_parameters() -> list[str]:
    """Node parameters kept for existing parameter files (``PARAMETERS[name].deprecated``)."""
    from video_seg_ros.ros.parameters import PARAMETERS

    return [name for name, spec in PARAMETERS.items() if spec.deprecated]
