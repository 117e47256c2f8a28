"""Rewriting values of a params file in place, keeping its comments, layout and quoting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from flightloop.config import set_dotted


def write_params(path: Path, overrides: dict[str, Any]) -> None:
    """Write dotted-key overrides into a params file (as `dvc exp run -S` would), keeping its comments and
    layout; an unknown section is refused before anything is written."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedSeq
    from ruamel.yaml.scalarstring import ScalarString

    check = yaml.safe_load(path.read_text())
    for key, value in overrides.items():
        set_dotted(check, key, value)
    doc_yaml = YAML()
    doc_yaml.preserve_quotes = True
    doc_yaml.width = 4096
    doc = doc_yaml.load(path.read_text())
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = doc
        for part in parents:
            node = node[part]
        old = node.get(leaf)
        if isinstance(value, list | tuple):
            seq = CommentedSeq(list(value))
            if isinstance(old, CommentedSeq) and old.fa.flow_style():
                seq.fa.set_flow_style()
            value = seq
        elif isinstance(value, str) and isinstance(old, ScalarString):
            value = type(old)(value)  # keep the quoting style, e.g. end: "2013-06"
        node[leaf] = value
    with path.open("w") as fh:
        doc_yaml.dump(doc, fh)


def yaml_text(value: Any) -> str:
    """A value as one line of YAML that yaml.safe_load reads back as the same value (1e-05 would be text)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=4096).strip()
    return text.removesuffix("...").strip()


def edit_values(path: Path, overrides: dict[str, Any]) -> None:
    """Replace the values of existing dotted keys on their own lines, leaving every other byte of the file
    as it was (comments, layout, quoting): a change a person reviews with `git diff`. A key that is not in
    the file, or whose value spans lines, is refused before anything is written."""
    from ruamel.yaml import YAML

    text = path.read_text()
    doc = YAML().load(text)
    lines = text.splitlines(keepends=True)
    expected = yaml.safe_load(text)
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = doc
        for part in parents:
            node = node.get(part) if hasattr(node, "get") else None
        if not hasattr(node, "lc") or leaf not in node:
            raise ValueError(f"{path} has no key {dotted!r} to rewrite")
        row, col = node.lc.value(leaf)
        line = lines[row]
        body = line[col:].rstrip("\r\n")
        comment = _comment_start(body)
        new = yaml_text(value)
        if comment is not None:  # the comment stays in its column where the new value leaves room
            new += " " * max(1, comment - len(new)) + body[comment:]
        lines[row] = line[:col] + new + line[len(line.rstrip("\r\n")) :]
        set_dotted(expected, dotted, value)
    edited = "".join(lines)
    if yaml.safe_load(edited) != expected:
        raise ValueError(f"{path}: a value spans lines or did not read back; edit it by hand: {list(overrides)}")
    path.write_text(edited)


def _comment_start(body: str) -> int | None:
    """Index of a trailing `#` comment in a line's value part (outside quotes), or None."""
    quote = None
    for i, ch in enumerate(body):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or body[i - 1] in " \t"):
            return i
    return None
