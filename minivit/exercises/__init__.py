"""Exercises with instant feedback, one module per chapter (``minivit.exercises.ch1`` ... ``ch9``).

In a notebook::

    from minivit.exercises.ch1 import ex2
    ex2.check(my_conv2d)   # correct, or what is wrong in one line
    ex2.hint()             # a hint; call again for a stronger one
    ex2.solution()         # the reference solution

``base.Exercise`` is the kit; ``.ci/insert_exercises.py`` places each chapter's exercise cells in its notebook.
"""
from __future__ import annotations

import importlib

from minivit.exercises.base import Exercise, Result, Wrong

CHAPTERS = tuple(range(1, 10))


def chapter(number: int):
    """The module of chapter ``number``'s exercises (``EXERCISES``, ``NOTEBOOK``)."""
    if number not in CHAPTERS:
        raise ValueError(f"chapters with exercises are {CHAPTERS[0]} to {CHAPTERS[-1]}, got {number!r}")
    return importlib.import_module(f"minivit.exercises.ch{number}")


__all__ = ["CHAPTERS", "Exercise", "Result", "Wrong", "chapter"]
