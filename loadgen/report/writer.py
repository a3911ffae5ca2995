"""``write_report``: the report of some result files, written as Markdown, JSON and PNG plots."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import msgspec

from loadgen.report.data import build
from loadgen.report.markdown import to_markdown


def write_report(paths: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> list[Path]:
    """Build the report of ``paths`` into ``out``: report.md, report.json and the PNG plots."""
    # Imported here so that matplotlib loads only when a report is drawn, not with every command.
    from loadgen.report import plots

    folder = Path(out)
    data, runs, _ = build(paths, relative_to=folder)
    folder.mkdir(parents=True, exist_ok=True)
    images = plots.plot_all(data, runs, folder)
    md = folder / "report.md"
    md.write_text(to_markdown(data, [os.path.relpath(p, folder) for p in images]))
    js = folder / "report.json"
    js.write_bytes(msgspec.json.format(msgspec.json.encode(data), indent=1))
    return [md, js, *images]
