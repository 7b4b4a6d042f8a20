#!/usr/bin/env python3
"""Insert each chapter's exercise cells into its notebook, after the section that teaches the idea.

    python .ci/insert_exercises.py                # every chapter, notebooks/ of this repository
    python .ci/insert_exercises.py --chapters 1 3 --notebooks /tmp/copy

Each exercise of ``minivit.exercises.chN`` names an anchor: the start of a markdown heading line
(e.g. ``## 3. Padding``) and a position, ``before`` that cell or ``after`` it plus ``offset`` more
cells. The inserted cells carry the cell tag ``exercise``; a re-run first removes every tagged cell,
so it is idempotent. A missing or ambiguous anchor stops the script with the anchor's text, before
any notebook is written. Re-execute the notebooks afterwards (see the README).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from minivit.exercises import CHAPTERS, chapter  # noqa: E402

TAG = "exercise"


class AnchorError(ValueError):
    """An exercise's anchor heading is missing from its notebook, or found more than once."""


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _lines(text: str) -> list[str]:
    lines = text.splitlines(keepends=True)
    return lines


def is_exercise_cell(cell: dict) -> bool:
    return TAG in cell.get("metadata", {}).get("tags", [])


def find_anchor(cells: list[dict], anchor: str, where: str) -> int:
    """Index of the one markdown cell with a line starting with ``anchor``."""
    hits = [i for i, cell in enumerate(cells) if cell["cell_type"] == "markdown"
            and any(line.strip().startswith(anchor) for line in _source(cell).splitlines())]
    if not hits:
        raise AnchorError(f"{where}: no markdown cell has a line starting with {anchor!r}; the heading was "
                          f"renamed or removed: update the exercise's anchor in minivit/exercises")
    if len(hits) > 1:
        raise AnchorError(f"{where}: {len(hits)} markdown cells (cells {hits}) have a line starting with {anchor!r}; "
                          f"make the anchor longer")
    return hits[0]


def exercise_cells(exercise, number: int) -> list[dict]:
    """The notebook cells of one exercise, tagged, with stable ids."""
    cells = []
    for k, (cell_type, source) in enumerate(exercise.cells()):
        if cell_type == "markdown":
            source += (f"\n\n*`{exercise.name}.check(...)` says whether your answer is right; `{exercise.name}.hint()` "
                       f"gives a hint (call it twice for a stronger one); `{exercise.name}.solution()` shows a "
                       f"solution. All of this chapter's solutions: `notebooks/solutions/ch{number}_solutions.ipynb`.*")
        cell = {"cell_type": cell_type, "id": f"ex-ch{number}-{exercise.name}-{k}",
                "metadata": {"tags": [TAG]}, "source": _lines(source)}
        if cell_type == "code":
            cell.update(execution_count=None, outputs=[])
        cells.append(cell)
    return cells


def insert_chapter(notebook: dict, number: int, where: str = "") -> dict:
    """A copy of ``notebook`` with chapter ``number``'s exercises (re)inserted."""
    module = chapter(number)
    cells = [cell for cell in notebook["cells"] if not is_exercise_cell(cell)]
    blocks: dict[int, list[dict]] = {}
    for exercise in module.EXERCISES:
        index = find_anchor(cells, exercise.anchor, where or module.NOTEBOOK)
        if exercise.position == "before":
            at = index
        elif exercise.position == "after":
            at = index + 1 + exercise.offset
        else:
            raise ValueError(f"{exercise.name}: position must be 'before' or 'after', got {exercise.position!r}")
        if not 0 <= at <= len(cells):
            raise AnchorError(f"{where or module.NOTEBOOK}: {exercise.name} would go to cell {at}, past the end")
        blocks.setdefault(at, []).extend(exercise_cells(exercise, number))
    out = []
    for i in range(len(cells) + 1):
        out.extend(blocks.get(i, []))
        if i < len(cells):
            out.append(cells[i])
    return {**notebook, "cells": out}


def write_notebook(notebook: dict, path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(notebook, f, indent=1, ensure_ascii=False)
        f.write("\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebooks", type=Path, default=ROOT / "notebooks", help="folder of the chapter notebooks")
    parser.add_argument("--chapters", type=int, nargs="+", default=list(CHAPTERS), help="chapters to update")
    args = parser.parse_args(argv)
    updated = []
    for number in args.chapters:  # everything is checked before anything is written
        module = chapter(number)
        path = args.notebooks / module.NOTEBOOK
        if not path.is_file():
            raise SystemExit(f"insert_exercises: {path} not found")
        notebook = json.loads(path.read_text(encoding="utf-8"))
        try:
            updated.append((path, insert_chapter(notebook, number, str(path)), len(module.EXERCISES)))
        except AnchorError as error:
            raise SystemExit(f"insert_exercises: {error}") from None
    for path, notebook, count in updated:
        write_notebook(notebook, path)
        print(f"{path.name}: {count} exercises ({sum(map(is_exercise_cell, notebook['cells']))} cells)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
