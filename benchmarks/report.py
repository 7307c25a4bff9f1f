"""Benchmark results as Markdown: a `Section` per benchmark, tables from DataFrames, the whole RESULTS.md."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


@dataclass(frozen=True)
class Headline:
    """One target of the issue and what this run measured for it; `met` is None where no target applies."""

    figure: str
    value: str
    target: str
    met: bool | None


@dataclass
class Section:
    """A benchmark's part of RESULTS.md: a title, Markdown paragraphs and tables, and its headline figures."""

    title: str
    parts: list[str] = field(default_factory=list)
    headlines: list[Headline] = field(default_factory=list)

    def text(self, paragraph: str) -> None:
        self.parts.append(paragraph.strip())

    def table(self, frame: pd.DataFrame, caption: str | None = None, floatfmt: str = ".3g") -> None:
        block = markdown_table(frame, floatfmt)
        self.parts.append(f"{caption.strip()}\n\n{block}" if caption else block)

    def markdown(self, level: int = 2) -> str:
        return "\n\n".join([f"{'#' * level} {self.title}", *self.parts]) + "\n"


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".3g") -> str:
    """A GitHub Markdown table; floats formatted with `floatfmt`, other values as str()."""
    columns = [str(c) for c in frame.columns]
    rows = [[_cell(v, floatfmt) for v in row] for row in frame.itertuples(index=False)]
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns]
    align = ["---:" if n else "---" for n in numeric]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value, floatfmt: str) -> str:
    if isinstance(value, float):
        return "" if pd.isna(value) else format(value, floatfmt)
    return str(value).replace("|", "\\|")


def headline_table(headlines: list[Headline]) -> pd.DataFrame:
    verdict = {True: "yes", False: "**no**", None: ""}
    return pd.DataFrame(
        {
            "figure": [h.figure for h in headlines],
            "measured": [h.value for h in headlines],
            "target": [h.target for h in headlines],
            "met": [verdict[h.met] for h in headlines],
        }
    )


def write_results(path: Path, preamble: str, sections: list[Section]) -> None:
    """RESULTS.md: the preamble, a table of every headline figure, then each section."""
    headlines = [h for s in sections for h in s.headlines]
    body = [preamble.strip(), "## Headline figures\n\n" + markdown_table(headline_table(headlines))]
    body += [s.markdown() for s in sections]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(part.strip() for part in body) + "\n")
