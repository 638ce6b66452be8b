"""Draw the ratio columns of bench/results/*.md as one SVG bar chart, without dependencies.

``python -m bench.plot`` (and ``python -m bench`` at its end) reads every markdown table in
``bench/results/``, takes its first ratio column (a header with "ratio", "vs " or "×"), keeps the
rows naming repom, SQLAlchemy or advanced-alchemy, and writes ``bench/results/ratios.svg``:
horizontal bars on a log scale, the 1.0 line marked, one section per table.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from html import escape
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
OUTPUT = RESULTS / "ratios.svg"
_NUMBER = re.compile(r"^[-+]?\d[\d,]*(\.\d+)?\s*[x×]?$")
COLOURS = {"repom": "#2b6cb0", "advanced-alchemy": "#c05621", "SQLAlchemy": "#718096"}


@dataclass
class Section:
    title: str
    column: str
    bars: list[tuple[str, float, str]]


def family(label: str) -> str | None:
    lowered = label.lower()
    if "advanced" in lowered:
        return "advanced-alchemy"
    if "repom" in lowered:
        return "repom"
    if "sqlalchemy" in lowered or "asyncpg" in lowered or "psycopg" in lowered:
        return "SQLAlchemy"
    return None


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _ratio_column(header: list[str]) -> int | None:
    for index, name in enumerate(header):
        lowered = name.lower()
        if "ratio" in lowered or lowered.startswith("vs ") or "×" in name:
            return index
    return None


def _value(cell: str) -> float | None:
    cell = cell.replace("*", "").strip()
    if not _NUMBER.match(cell):
        return None
    return float(cell.rstrip("x×").replace(",", "").strip())


def parse(path: Path) -> list[Section]:
    sections: list[Section] = []
    heading = path.stem
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = f"{path.stem}: {line.lstrip('#').strip()}"
        is_table = line.startswith("|") and i + 1 < len(lines)
        if is_table and set(lines[i + 1].replace("|", "").strip()) <= set("-: "):
            header = _cells(line)
            column = _ratio_column(header)
            i += 2
            bars = []
            while i < len(lines) and lines[i].startswith("|"):
                cells = _cells(lines[i])
                if column is not None and column < len(cells):
                    labels = [c for c in cells[:column] if _value(c) is None]
                    label = " / ".join(labels)
                    value = _value(cells[column])
                    kind = family(label)
                    if value is not None and value > 0 and kind is not None:
                        bars.append((label, value, kind))
                i += 1
            if bars and column is not None:
                sections.append(Section(heading, header[column], bars))
            continue
        i += 1
    return sections


def render(sections: list[Section]) -> str:
    bar_h, gap, label_w, plot_w, pad = 16, 4, 330, 420, 10
    values = [v for s in sections for _, v, _ in s.bars] or [1.0]
    low = min(0.5, min(values))
    high = max(2.0, max(values))
    span = math.log(high) - math.log(low)

    def x(value: float) -> float:
        return label_w + (math.log(value) - math.log(low)) / span * plot_w

    parts: list[str] = []
    y = 40
    for section in sections:
        title = escape(f"{section.title} ({section.column})")
        parts.append(f'<text x="{pad}" y="{y}" font-weight="bold">{title}</text>')
        y += gap + 4
        for label, value, kind in section.bars:
            text = escape(label if len(label) <= 52 else label[:51] + "…")
            parts.append(f'<text x="{label_w - 6}" y="{y + 12}" text-anchor="end">{text}</text>')
            left, right = sorted((x(1.0), x(value)))
            parts.append(
                f'<rect x="{left:.1f}" y="{y}" width="{max(right - left, 1):.1f}" '
                f'height="{bar_h}" fill="{COLOURS[kind]}"/>'
            )
            parts.append(f'<text x="{max(right, left) + 4:.1f}" y="{y + 12}">{value:g}x</text>')
            y += bar_h + gap
        y += 18
    one = x(1.0)
    height = y + 10
    legend = "".join(
        f'<rect x="{pad + 170 * i}" y="8" width="12" height="12" fill="{colour}"/>'
        f'<text x="{pad + 170 * i + 16}" y="18">{escape(name)}</text>'
        for i, (name, colour) in enumerate(COLOURS.items())
    )
    width = label_w + plot_w + 80
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11">'
        f'<rect width="100%" height="100%" fill="white"/>{legend}'
        f'<line x1="{one:.1f}" y1="28" x2="{one:.1f}" y2="{height - 5}" stroke="black" '
        f'stroke-dasharray="3,3"/><text x="{one + 3:.1f}" y="36">1.0 (log scale)</text>'
        + "".join(parts)
        + "</svg>\n"
    )


def main(argv: list[str] | None = None) -> int:
    results = Path(argv[0]) if argv else RESULTS
    sections = [s for p in sorted(results.glob("*.md")) if p.name != "README.md" for s in parse(p)]
    output = results / OUTPUT.name
    output.write_text(render(sections), encoding="utf-8")
    print(f"wrote {output} ({sum(len(s.bars) for s in sections)} bars, {len(sections)} tables)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
