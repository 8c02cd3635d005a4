"""A self-contained HTML report: claims table first, then one section per analysis.

Figures are embedded as base64 PNG, so ``report.html`` opens anywhere, offline, on its own.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from typing import Any

from matplotlib.figure import Figure

from tinylens.studies.claims import Claim


@dataclass
class Section:
    """One analysis: a heading, a paragraph, figures and small tables."""

    title: str
    text: str
    figures: list[tuple[Figure, str]] = field(default_factory=list)
    """(figure, caption) pairs."""
    tables: list[tuple[list[str], list[list[Any]]]] = field(default_factory=list)
    """(header, rows) pairs."""


def new_figure(width: float = 8.0, height: float = 4.5) -> Figure:
    """A blank figure in the reports' layout (no pyplot state: safe in threads and tests)."""
    return Figure(figsize=(width, height), layout="constrained")


def pct(x: float, digits: int = 1) -> str:
    """``x`` as a percentage with ``digits`` decimals; "-" for NaN (nothing to measure)."""
    return "-" if math.isnan(x) else f"{x:.{digits}%}"


def figure_png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3} .yes{color:#11772d;font-weight:bold} .no{color:#b3261e;font-weight:bold}
figure{margin:1.5em 0} img{max-width:100%} figcaption{font-size:14px;color:#555}
.meta{color:#555;font-size:14px}
"""


def render_report(
    title: str, meta: list[str], claims: list[Claim], sections: list[Section]
) -> tuple[str, dict[str, bytes]]:
    """The report's HTML and its figures as PNG bytes (name → bytes) for saving beside it."""
    parts = [f"<h1>{html.escape(title)}</h1>"]
    parts += [f"<p class='meta'>{html.escape(line)}</p>" for line in meta]
    rows = "".join(
        f"<tr><td>{html.escape(c.claim)}</td><td>{html.escape(c.expected)}</td>"
        f"<td>{html.escape(c.measured)}</td>"
        f"<td>{'-' if c.control is None else f'{c.control:.3g}'}</td>"
        f"<td class='{'yes' if c.holds else 'no'}'>{'holds' if c.holds else 'does not hold'}</td>"
        f"<td>{html.escape(c.rule)}</td></tr>"
        for c in claims
    )
    if claims:  # a sweep's report has none
        parts.append(
            "<h2>Claims</h2><table><thead><tr><th>claim</th><th>paper</th><th>measured</th>"
            f"<th>control</th><th>verdict</th><th>rule</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    pngs: dict[str, bytes] = {}
    for i, section in enumerate(sections):
        parts.append(f"<h2>{html.escape(section.title)}</h2><p>{html.escape(section.text)}</p>")
        for header, table_rows in section.tables:
            parts.append(_table(header, table_rows))
        for j, (fig, caption) in enumerate(section.figures):
            png = figure_png(fig)
            pngs[f"{i:02d}-{j}-{_slug(section.title)}"] = png
            data = base64.b64encode(png).decode()
            parts.append(
                f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    body = "\n".join(parts)
    doc = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body>{body}</body></html>"
    )
    return doc, pngs


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")[:40]
