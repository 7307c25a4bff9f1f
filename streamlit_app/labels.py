"""How ratings, reasons, file names and skipped files are written on screen."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterable

import pandas as pd

from simlib import FileError
from simlib.ratings import REJECTED, format_stars

VISUAL_BADGE = ":green-badge[Visual match]"
BELOW_THRESHOLD_BADGE = ":gray-badge[Visual, below threshold]"
FALLBACK_BADGE = ":orange-badge[Rating fallback]"
KEEPER_BADGE = ":green-badge[Keeper]"
TIED_KEEPER_BADGE = ":green-badge[Keeper of a tie]"
TIE_BADGE = ":gray-badge[Tie: a copy]"
COPY_BADGE = ":orange-badge[Copy]"
_INLINE_MARKDOWN = re.compile(r"([\\`*_\[\]<>~$])")  # emphasis, code, links, HTML, strikethrough, LaTeX


def badge(reason: str, score: float, threshold: float) -> str:
    """Markdown for a result's badge: a visual match (its match score reaches the threshold), a visual neighbour
    below the match threshold (the visual rule lists k images even when only the best ones match), or a rating
    fallback."""
    if reason != "visual":
        return FALLBACK_BADGE
    return VISUAL_BADGE if score >= threshold else BELOW_THRESHOLD_BADGE


def duplicate_badge(keeper: bool, tie: bool) -> str:
    """Markdown for a group member's badge: the keeper (of a tie or not), a copy tied with it, or a copy."""
    if keeper:
        return TIED_KEEPER_BADGE if tie else KEEPER_BADGE
    return TIE_BADGE if tie else COPY_BADGE


def stars(rating: float | None) -> str:
    """'★★★★☆ 4', '★★½☆☆ 2.5', 'rejected (-1)' or 'unrated'."""
    if rating is None:
        return "unrated"
    if rating == REJECTED:
        return "rejected (-1)"
    full = int(rating)
    half = "½" if rating != full else ""
    return "★" * full + half + "☆" * (5 - math.ceil(rating)) + f" {format_stars(rating)}"


def file_name(path: str) -> str:
    return Path(path).name


def folder_name(path: str) -> str:
    """A folder by its last two names ('photos/2026'), enough to tell a collection's folders apart."""
    parts = Path(path).parts
    return "/".join(parts[-2:]) if len(parts) > 1 else path


def escape(text: str) -> str:
    """`text` shown literally inside a line of Markdown (never at its start)."""
    return _INLINE_MARKDOWN.sub(r"\\\1", text)


def skipped(errors: Iterable[FileError]) -> pd.DataFrame:
    """Skipped files as a table: file name and reason."""
    return pd.DataFrame([(file_name(e.path), e.reason) for e in errors], columns=["file", "reason"])
