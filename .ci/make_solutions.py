#!/usr/bin/env python3
"""Write notebooks/solutions/chN_solutions.ipynb from the exercises' reference solutions (unexecuted).

    python .ci/make_solutions.py [--chapters 1 2 ...]

Each notebook: the course's setup cell (copied from chapter 7), one import cell, then per exercise its
prompt and its solution followed by ``exN.check(...)``; an experiment runs its measurement first.
Execute them afterwards under the ``cpu`` profile, from notebooks/solutions/:
``MINIVIT_PROFILE=cpu jupyter nbconvert --to notebook --execute --inplace chN_solutions.ipynb``.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from minivit.exercises import CHAPTERS, chapter  # noqa: E402

IMPORT = re.compile(r"^(import |from \S+ import )")


def _split_imports(code: str) -> tuple[list[str], str]:
    imports, body = [], []
    for line in textwrap.dedent(code).strip().splitlines():
        (imports if IMPORT.match(line) else body).append(line)
    imports = [line.split("  #")[0] for line in imports if "minivit.exercises" not in line]
    return imports, "\n".join(body).strip()


def _cell(cell_type: str, source: str, cell_id: str) -> dict:
    cell = {"cell_type": cell_type, "id": cell_id, "metadata": {}, "source": source.splitlines(keepends=True)}
    if cell_type == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


def solution_body(exercise) -> tuple[list[str], str]:
    """The imports and the code of one exercise's solution cell."""
    if exercise.kind == "experiment" and exercise.answer_name == "answer":  # the measurement, then the answer
        imports, starter = _split_imports(exercise.starter)
        lines = [line for line in starter.splitlines() if not line.startswith(f"# {exercise.name}.")]
        lines = [exercise.solution_code.strip() if line.startswith("answer = ...") else line for line in lines]
        return imports, "\n".join(lines)
    imports, body = _split_imports(exercise.solution_code)
    if exercise.kind == "experiment":  # a function to write, then run on the chapter's data: keep the setup
        more, starter = _split_imports(exercise.starter)
        lines, out, skipping = starter.splitlines(), [], False
        for line in lines:
            if line.startswith(f"def {exercise.answer_name}("):
                out.append(body)
                skipping = True
                continue
            if skipping and (not line.strip() or line.startswith((" ", "\t"))):
                continue
            skipping = False
            if line.startswith(f"# {exercise.name}."):
                continue
            out.append(line[2:] if line.startswith(("# print(", "# drop = ")) else line)
        return imports + [line for line in more if line not in imports], "\n".join(out).replace(
            f"\n{exercise.name}.check", f"\n\n\n{exercise.name}.check")
    return imports, f"{body}\n\n\n{exercise.name}.check({exercise.answer_name})"


def build(number: int) -> dict:
    module = chapter(number)
    setup = json.loads((ROOT / "notebooks" / "07_attention_maps.ipynb").read_text(encoding="utf-8"))
    setup_source = next("".join(c["source"]) for c in setup["cells"] if c["cell_type"] == "code")
    names = ", ".join(ex.name for ex in module.EXERCISES)
    cells = [
        _cell("markdown", f"# Chapter {number}: solutions to the exercises\n\nThe exercises sit in "
                          f"`notebooks/{module.NOTEBOOK}`, each after the section that teaches its idea. Try them "
                          f"there first: `exN.check(...)` answers at once, and `exN.hint()` helps. Below, every "
                          f"reference solution passes its checker.", f"sol-ch{number}-title"),
        _cell("code", setup_source, f"sol-ch{number}-setup"),
    ]
    all_imports, bodies = [], []
    for exercise in module.EXERCISES:
        imports, body = solution_body(exercise)
        all_imports += [line for line in imports if line not in all_imports]
        bodies.append((exercise, body))
    all_imports.append(f"from minivit.exercises.ch{number} import {names}")
    cells.append(_cell("code", "\n".join(all_imports), f"sol-ch{number}-imports"))
    for exercise, body in bodies:
        title = f"## Exercise {exercise.name[2:]}: {exercise.title}\n\n{textwrap.dedent(exercise.prompt).strip()}"
        cells.append(_cell("markdown", title, f"sol-ch{number}-{exercise.name}-prompt"))
        cells.append(_cell("code", body, f"sol-ch{number}-{exercise.name}"))
    return {"cells": cells, "metadata": {k: v for k, v in setup["metadata"].items() if k != "widgets"},
            "nbformat": 4, "nbformat_minor": 5}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chapters", type=int, nargs="+", default=list(CHAPTERS))
    args = parser.parse_args(argv)
    folder = ROOT / "notebooks" / "solutions"
    folder.mkdir(exist_ok=True)
    for number in args.chapters:
        path = folder / f"ch{number}_solutions.ipynb"
        with open(path, "w", encoding="utf-8") as f:
            json.dump(build(number), f, indent=1, ensure_ascii=False)
            f.write("\n")
        ruff = Path(sys.executable).parent / "ruff"
        if ruff.exists():  # sort the gathered imports as CI's lint wants them
            subprocess.run([str(ruff), "check", "--fix", "-q", "--select", "I", str(path)], cwd=ROOT, check=False)
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
