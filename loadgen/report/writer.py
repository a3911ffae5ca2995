"""``write_report``: the report of some result files, written as Markdown, JSON and PNG plots."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import msgspec

from loadgen.report.data import Loaded, build_from, load_inputs, split_runs
from loadgen.report.markdown import to_markdown
from loadgen.results.compare import CompareSummary


def write_report(
    paths: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *, split_by: Sequence[str] = ()
) -> list[Path]:
    """Build the report of ``paths`` into ``out``: report.md, report.json and the PNG plots.

    Runs that differ in CPU, account count or scenario are refused (``MixedInputs``) unless
    ``split_by`` names the dimension: then one report per group, each in its own subdirectory
    of ``out`` named after what the group shares.
    """
    runs, summary = load_inputs(paths)
    groups = split_runs(runs, split_by)
    folder = Path(out)
    if not split_by:
        return _write(folder, runs, summary, "")
    written: list[Path] = []
    for label, group in groups.items():
        mine = summary if any(r.ref is not None for r in group) else None
        written += _write(folder / _directory_name(label), group, mine, label)
    return written


def _directory_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-")[:80] or "group"


def _write(folder: Path, runs: list[Loaded], summary: CompareSummary | None, group: str) -> list[Path]:
    # Imported here so that matplotlib loads only when a report is drawn, not with every command.
    from loadgen.report import plots

    data = build_from(runs, summary, relative_to=folder, group=group)
    folder.mkdir(parents=True, exist_ok=True)
    images = plots.plot_all(data, runs, folder)
    md = folder / "report.md"
    md.write_text(to_markdown(data, [os.path.relpath(p, folder) for p in images]))
    js = folder / "report.json"
    js.write_bytes(msgspec.json.format(msgspec.json.encode(data), indent=1))
    return [md, js, *images]
