"""No stale spelling in the docs: README.md, docs/, config/ and the model card use the current
option and parameter names only. The deprecated CLI spellings are read from the tools' parsers
(test/cli_vocabulary.py), so an alias added later is checked too. A failure names file:line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cli_vocabulary import (
    REPO_ROOT,
    console_scripts,
    current_options,
    deprecated_aliases,
    deprecated_node_parameters,
    tool_parsers,
)

MODEL_CARD = REPO_ROOT / "video_seg_ros" / "resources" / "MODEL_CARD.md"
#: The README's parameter table is generated from the node's descriptors, which name the
#: deprecated parameters as such (test_node_parameters.py keeps it in step).
GENERATED = re.compile(
    r"<!-- parameters table: generated.*?<!-- end of parameters table -->", re.DOTALL
)


def documents() -> list[Path]:
    paths = [REPO_ROOT / "README.md", MODEL_CARD, *sorted((REPO_ROOT / "docs").rglob("*.md"))]
    paths += sorted(
        path
        for path in (REPO_ROOT / "config").rglob("*")
        if path.suffix in (".yaml", ".yml", ".xml", ".json", ".rviz")
    )
    return paths


def logical_lines(path: Path) -> list[tuple[int, str]]:
    """(first line number, text) with shell continuations (``\\`` at the end) joined and the
    generated parameter table blanked out (line numbers kept)."""
    text = GENERATED.sub(lambda match: "\n" * match.group(0).count("\n"), path.read_text())
    joined, start, parts = [], None, []
    for number, line in enumerate(text.splitlines(), 1):
        start = start or number
        parts.append(line.rstrip().removesuffix("\\"))
        if not line.rstrip().endswith("\\"):
            joined.append((start, " ".join(parts)))
            start, parts = None, []
    if parts:
        joined.append((start, " ".join(parts)))
    return joined


def _token(spelling: str) -> re.Pattern:
    return re.compile(rf"(?<![\w-]){re.escape(spelling)}(?![\w-])")


def stale_spellings() -> list[tuple[re.Pattern, tuple[str, ...] | None, str]]:
    """(pattern, names of which a line must contain one for it to count or None, what to write
    instead)."""
    parsers = tool_parsers()
    current = current_options(parsers)
    module_of = {script: target.split(":")[0] for script, target in console_scripts().items()}
    by_spelling: dict[str, list] = {}
    for alias in deprecated_aliases(parsers):
        by_spelling.setdefault(alias.old, []).append(alias)
    checks = []
    for old, aliases in sorted(by_spelling.items()):
        scripts = sorted({alias.script for alias in aliases})
        # a spelling another tool still accepts is stale only on a line naming a tool that
        # deprecated it
        context = None
        if old in current:
            context = tuple(scripts) + tuple(module_of[script] for script in scripts)
        instead = (
            " or ".join(sorted({alias.new for alias in aliases})) + f" ({', '.join(scripts)})"
        )
        checks.append((_token(old), context, instead))
    for name in deprecated_node_parameters():
        checks.append(
            (
                _token(name) if "_" in name else re.compile(rf"(?<![\w-]){name}\s*(:=|:\s|:$)"),
                None,
                f"the node parameter that replaced {name} (README, Parameters)",
            )
        )
    checks.append((re.compile(r"\bfp16=(True|False)"), None, "precision='fp16' or 'fp32'"))
    return checks


def test_the_documents_exist():
    names = {path.name for path in documents()}
    assert {"README.md", "MODEL_CARD.md", "training.md", "video_seg.yaml"} <= names


def test_no_document_uses_a_deprecated_spelling():
    checks = stale_spellings()
    found = []
    for path in documents():
        for number, line in logical_lines(path):
            for pattern, context, instead in checks:
                if context and not any(name in line for name in context):
                    continue
                match = pattern.search(line)
                if match:
                    found.append(
                        f"{path.relative_to(REPO_ROOT)}:{number}: {match.group(0).strip()}"
                        f" -> {instead}"
                    )
    assert not found, "deprecated spellings in the docs:\n" + "\n".join(sorted(set(found)))


@pytest.mark.parametrize("script", sorted(console_scripts()))
def test_the_readme_lists_every_console_script(script):
    tools = (REPO_ROOT / "README.md").read_text().split("## Command-line tools", 1)[1]
    assert f"`{script}`" in tools.split("\n## ", 1)[0]


def test_every_option_a_document_gives_a_tool_exists():
    """``video-seg-X ... --flag`` in the docs: the flag is one that tool's parser knows."""
    parsers = tool_parsers()
    module_of = {script: target.split(":")[0] for script, target in console_scripts().items()}
    known = {
        script: {option for action in parser._actions for option in action.option_strings}
        for script, parser in parsers.items()
    }
    # a command ends at the next tool, a shell separator, the end of inline code or a comment
    command_end = re.compile(r"video-seg-\w|video_seg_ros\.tools\.|&&|;|\||`|\s#")
    unknown, checked = [], 0
    for path in documents():
        for number, line in logical_lines(path):
            for script in parsers:
                name = rf"(?<![\w-]){re.escape(script)}(?![\w-])|{re.escape(module_of[script])}\b"
                for match in re.finditer(name, line):
                    command = command_end.split(line[match.end() :])[0]
                    for option in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", command):
                        checked += 1
                        if option not in known[script]:
                            unknown.append(
                                f"{path.relative_to(REPO_ROOT)}:{number}: {script} {option}"
                            )
    assert checked > 100  # the docs are full of commands: the scan found them
    assert not unknown, "options no tool accepts:\n" + "\n".join(unknown)
