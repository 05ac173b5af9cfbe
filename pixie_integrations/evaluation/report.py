"""What a person reads: the model card's table in Markdown, an NDCG@k chart, file-safe model names, JSON files."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["TableRow", "format_table", "plot_ndcg", "safe_name", "write_json"]


@dataclass(frozen=True)
class TableRow:
    """One line of the comparison table."""

    name: str
    ndcg: Mapping[int, float]
    avg_ndcg: float


def safe_name(model: str) -> str:
    """A folder name for a model id or path: ``telepix/PIXIE-...`` -> ``telepix__PIXIE-...``.

    Path separators become ``__``, anything but letters, digits, ``.``, ``_`` and ``-`` becomes ``_``; leading
    ``/``, ``./`` and ``..`` parts are dropped so that the folder always lands inside the output folder.
    """
    parts = [p for p in str(model).strip().replace("\\", "/").split("/") if p not in ("", ".", "..")]
    name = re.sub(r"[^0-9A-Za-z._-]+", "_", "__".join(parts)).strip("._") or "model"
    if len(name) > 120:  # file systems cap names at 255 bytes; keep it readable and unique
        name = f"{name[:100]}-{hashlib.sha256(str(model).encode()).hexdigest()[:12]}"
    return name


def format_table(rows: Sequence[TableRow], k_values: Sequence[int] | None = None) -> str:
    """The card's table: ``Model Name | Avg. NDCG | NDCG@1 | ...``, 4 decimals, best Avg. NDCG first."""
    ks = list(k_values) if k_values is not None else sorted({k for row in rows for k in row.ndcg})
    header = "| Model Name | Avg. NDCG | " + " | ".join(f"NDCG@{k}" for k in ks) + " |"
    rule = "|---|---:|" + "---:|" * len(ks)
    lines = [header, rule]
    for row in sorted(rows, key=lambda r: -r.avg_ndcg):
        cells = [f"{row.avg_ndcg:.4f}"] + [f"{row.ndcg[k]:.4f}" for k in ks]
        lines.append(f"| {row.name.replace('|', '/')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_ndcg(
    rows: Sequence[TableRow],
    path: str | os.PathLike[str],
    *,
    title: str = "NDCG@k",
    baseline: TableRow | None = None,
) -> Path:
    """Draw NDCG@k per model (one line each, the first stage dashed) into a PNG with matplotlib's Agg backend.

    The figure is built without pyplot, so it neither needs a display nor changes the caller's backend.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        from ..install import install_hint

        raise ImportError(f"The NDCG chart needs matplotlib: {install_hint('eval')}") from exc
    ks = sorted({k for row in rows for k in row.ndcg})
    figure = Figure(figsize=(7.5, 4.5), dpi=150)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    x = list(range(len(ks)))
    for row in sorted(rows, key=lambda r: -r.avg_ndcg):
        axes.plot(x, [row.ndcg[k] for k in ks], marker="o", label=f"{row.name} ({row.avg_ndcg:.4f})")
    if baseline is not None:
        axes.plot(
            x,
            [baseline.ndcg[k] for k in ks],
            linestyle="--",
            color="gray",
            marker="x",
            label=f"{baseline.name} ({baseline.avg_ndcg:.4f})",
        )
    axes.set_xticks(x, [f"@{k}" for k in ks])
    axes.set_xlabel("cut-off k")
    axes.set_ylabel("NDCG@k")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small", title="model (Avg. NDCG)", title_fontsize="small")
    figure.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, format="png")
    return target


def write_json(path: str | os.PathLike[str], data: Mapping[str, Any]) -> None:
    """Write JSON (UTF-8, Korean kept readable) through a temporary file, so a crash never leaves half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, target)
