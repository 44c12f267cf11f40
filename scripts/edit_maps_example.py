"""A scripted stand-in for the person who edits the maps of ``scripts/export_maps.py``: erase each map outside the
object's box (black = not here), optionally fill the box (white = look here), and write the edited maps elsewhere.

    python scripts/edit_maps_example.py logs/hitl                       # → logs/hitl/edited_maps/
    python scripts/edit_maps_example.py logs/hitl --fill-box --out logs/hitl/boxes_filled

Reads ``<export>/maps/**.png`` and ``<export>/boxes.csv`` (name = the path under maps/, x0, y0, x1, y1 in the map's
pixels, x1/y1 exclusive). A map whose image has no box is copied as it is (a map nobody edited: the fine-tuning keeps
it). The edited maps go to ``--out`` with the same paths, for ``abn-train data=folder data.mask_dir=<out> ...``.
The exported maps are never written over unless ``--out`` names them and ``--overwrite`` is given; an ``--out``
that holds files (perhaps edits) is refused without ``--overwrite`` too.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

Box = tuple[float, float, float, float]


def read_boxes(path: Path) -> dict[str, Box]:
    """``name → (x0, y0, x1, y1)`` of boxes.csv."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the exported data had no boxes, so there is nothing to edit "
                                "by; edit the maps by hand (any image editor: white = look here, black = not here)")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = {"name", "x0", "y0", "x1", "y1"}
    if rows and not columns <= set(rows[0]):
        raise ValueError(f"{path} needs the columns {', '.join(sorted(columns))}; it has {', '.join(rows[0])}")
    return {row["name"]: (float(row["x0"]), float(row["y0"]), float(row["x1"]), float(row["y1"])) for row in rows}


def edit_map(values: np.ndarray, box: Box, fill_box: bool) -> np.ndarray:
    """The map (H×W uint8) with everything outside the box set to 0 and, with ``fill_box``, the box to 255; the box
    covers every pixel it touches."""
    height, width = values.shape
    x0, y0 = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
    x1, y1 = min(width, math.ceil(box[2])), min(height, math.ceil(box[3]))
    edited = np.zeros_like(values)
    edited[y0:y1, x0:x1] = 255 if fill_box else values[y0:y1, x0:x1]
    return edited


def check_out(maps: Path, out: Path, overwrite: bool) -> None:
    if out.resolve() == maps.resolve() and not overwrite:
        raise FileExistsError(f"--out {out} is the exported maps folder; add --overwrite to edit them in place (the "
                              "exported maps are then lost), or choose another --out")
    if out.is_dir() and any(out.iterdir()) and out.resolve() != maps.resolve() and not overwrite:
        raise FileExistsError(f"{out} already holds files (perhaps edited maps); choose another --out or add "
                              "--overwrite")


def edit(export: Path, out: Optional[Path], fill_box: bool = False, overwrite: bool = False) -> dict[str, int]:
    """Edit every map of the export; returns how many were edited by their box and how many copied unchanged."""
    maps = export / "maps"
    if not maps.is_dir():
        raise FileNotFoundError(f"{maps} does not exist; give the --out folder of scripts/export_maps.py")
    out = out or export / "edited_maps"
    boxes = read_boxes(export / "boxes.csv")
    check_out(maps, out, overwrite)
    counts = {"edited": 0, "unchanged": 0}
    for path in sorted(maps.rglob("*.png")):
        name = path.relative_to(maps).as_posix()
        values = np.array(Image.open(path).convert("L"))
        if name in boxes:
            values = edit_map(values, boxes[name], fill_box)
        counts["edited" if name in boxes else "unchanged"] += 1
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(values, mode="L").save(target)
    unknown = sorted(set(boxes) - {path.relative_to(maps).as_posix() for path in maps.rglob("*.png")})
    if unknown:
        print(f"note: {len(unknown)} box(es) of boxes.csv have no map (first: {unknown[0]})")
    print(f"Wrote {counts['edited'] + counts['unchanged']} maps to {out}: {counts['edited']} erased outside their box"
          f"{' and filled inside' if fill_box else ''}, {counts['unchanged']} without a box copied unchanged.\n"
          f"Fine-tune on them with the command export_maps.py printed, with data.mask_dir={out}")
    return counts


def main(argv: Optional[list[str]] = None) -> dict[str, int]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export", type=Path, help="the --out folder of scripts/export_maps.py")
    parser.add_argument("--out", type=Path, help="where the edited maps go (default: <export>/edited_maps)")
    parser.add_argument("--fill-box", action="store_true", help="also set the box to white (255), not only keep it")
    parser.add_argument("--overwrite", action="store_true", help="write over files already in --out (or the exported "
                        "maps themselves when --out names them)")
    args = parser.parse_args(argv)
    try:
        return edit(args.export, args.out, args.fill_box, args.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        sys.exit(f"edit_maps_example.py: {error}")


if __name__ == "__main__":
    main()
