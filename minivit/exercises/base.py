"""The exercise kit: ``ex.check(answer)``, ``ex.hint()``, ``ex.solution()`` (as in Kaggle Learn).

A checker receives the learner's answer (a function, a number, a tuple or a letter), compares it
with the package's own implementation on random and edge-case inputs, and raises :class:`Wrong`
with one line that says what is wrong. Known mistakes are recognised by computing what that
mistake would produce (:func:`compare`). Nothing a learner writes can raise out of ``check``:
an unattempted answer (``...``, ``None``, a ``NotImplementedError``) says so, and any other
exception becomes one line.
"""
from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

CORRECT, WRONG, NOT_ATTEMPTED, CRASHED = "correct", "wrong", "not attempted", "crashed"


class Wrong(Exception):
    """Raised by a checker: the answer is wrong, and the message says how."""


class NotAttempted(Exception):
    """The learner's function raised NotImplementedError, or the answer is still ``...``."""


class Crashed(Exception):
    """The learner's code raised; the message names the exception and the input."""


@dataclass(frozen=True)
class Result:
    """What one check found: ``status`` (correct, wrong, not attempted, crashed) and one-line ``message``."""

    status: str
    message: str

    @property
    def ok(self) -> bool:
        return self.status == CORRECT


def call(fn: Callable, *args, on: str = "", **kwargs):
    """Call the learner's function; its exceptions become :class:`NotAttempted` or :class:`Crashed`."""
    if not callable(fn):
        raise Wrong(f"expected a function, got {type(fn).__name__}: pass the function itself, e.g. check(my_fn)")
    try:
        return fn(*args, **kwargs)
    except NotImplementedError as error:
        raise NotAttempted() from error
    except Exception as error:  # noqa: BLE001 - any learner error is reported, never raised
        where = f" on {on}" if on else ""
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise Crashed(f"your code raised {type(error).__name__}{where}: {first_line}".rstrip(": ")) from error


def _as_tensor(value, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    try:
        return torch.as_tensor(value)
    except Exception as error:  # noqa: BLE001
        raise Wrong(f"{name}: expected a tensor, got {type(value).__name__}") from error


def compare(got, expected: torch.Tensor, *, on: str, wrong: Mapping[str, object] | None = None,
            atol: float = 1e-5, rtol: float = 1e-4, what: str = "the output") -> None:
    """Raise :class:`Wrong` unless ``got`` equals ``expected``; name a known mistake when ``got`` matches it.

    ``wrong`` maps a message to what that mistake produces (a tensor, or a function of nothing
    that returns one). The first known mistake that ``got`` equals gives the message.
    """
    got = _as_tensor(got, what)
    expected = expected.detach().cpu()
    if got.shape == expected.shape and _close(got, expected, atol, rtol):
        return
    for message, mistake in (wrong or {}).items():
        mistake = mistake() if callable(mistake) else mistake
        mistake = _as_tensor(mistake, what)
        if got.shape == mistake.shape and _close(got, mistake, atol, rtol):
            raise Wrong(f"{message} (on {on})")
    if got.shape != expected.shape:
        raise Wrong(f"wrong shape on {on}: expected {tuple(expected.shape)}, got {tuple(got.shape)}")
    diff = (got.double() - expected.double()).abs()
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, float("inf")), diff)
    index = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape)) if diff.dim() else ()
    raise Wrong(f"wrong values on {on}: at index {index} expected {expected[index].item():.4g}, "
                f"got {got[index].item():.4g}")


def _close(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float) -> bool:
    if a.dtype == torch.bool or b.dtype == torch.bool:
        return a.dtype == b.dtype and bool((a == b).all())
    return bool(torch.allclose(a.double(), b.double(), atol=atol, rtol=rtol, equal_nan=True))


def compare_number(got, expected: float, *, wrong: Mapping[str, float] | None = None, on: str = "",
                   rel: float = 1e-6, abs_tol: float = 1e-9, what: str = "the answer") -> None:
    """Like :func:`compare` for one number."""
    try:
        got = float(got)
    except (TypeError, ValueError) as error:
        raise Wrong(f"{what}: expected a number, got {type(got).__name__}") from error
    where = f" (on {on})" if on else ""

    def close(a, b):
        return abs(a - b) <= max(abs_tol, rel * abs(b))

    if close(got, expected):
        return
    for message, value in (wrong or {}).items():
        if close(got, value):
            raise Wrong(f"{message}{where}")
    raise Wrong(f"{what} is {got:g}, which is not right{where}; it is {'larger' if got < expected else 'smaller'}")


def is_unattempted(answer) -> bool:
    return answer is None or answer is Ellipsis


@dataclass
class Exercise:
    """One exercise: its text, its starter cell, its checker, two hints and a reference solution.

    ``checker(answer)`` raises :class:`Wrong` (or lets :class:`NotAttempted` / :class:`Crashed` from
    :func:`call` through) and returns an optional line of praise. ``solution_code`` is Python that
    defines ``answer_name``; ``reference()`` runs it and returns that object (used by the tests and
    the solution notebooks). ``anchor`` places the exercise in the chapter notebook: the start of a
    markdown heading, inserted ``before`` it or ``after`` it plus ``offset`` further cells.
    """

    name: str
    title: str
    prompt: str
    starter: str
    answer_name: str
    solution_code: str
    hints: tuple[str, str]
    checker: Callable[[object], str | None]
    anchor: str
    position: str = "before"
    offset: int = 0
    kind: str = "implement"  # predict, implement, experiment
    recognised: tuple[str, ...] = ()
    _hints_given: int = field(default=0, repr=False)

    # --------------------------------------------------------------- what the learner calls
    def evaluate(self, answer=Ellipsis) -> Result:
        """Check ``answer`` and return a :class:`Result` (what :meth:`check` prints)."""
        if is_unattempted(answer):
            return Result(NOT_ATTEMPTED,
                          f"{self.name}: not attempted yet. Fill in your answer, then run the cell again.")
        try:
            praise = self.checker(answer)
        except NotAttempted:
            return Result(NOT_ATTEMPTED, f"{self.name}: not attempted yet (your function still raises "
                                         "NotImplementedError). Write it, then run the cell again.")
        except Wrong as error:
            return Result(WRONG, f"{self.name}: not yet. {error} (for a hint: {self.name}.hint())")
        except Crashed as error:
            return Result(CRASHED, f"{self.name}: {error} (for a hint: {self.name}.hint())")
        except Exception as error:  # noqa: BLE001 - e.g. an answer of an unexpected type deep in a checker
            return Result(CRASHED, f"{self.name}: checking your answer raised {type(error).__name__}: "
                                   f"{str(error).splitlines()[0] if str(error) else ''} "
                                   f"(for a hint: {self.name}.hint())")
        return Result(CORRECT, f"{self.name}: correct!" + (f" {praise}" if praise else ""))

    def check(self, answer=Ellipsis) -> None:
        """Print whether ``answer`` is correct, and if not, what is wrong (one or two lines)."""
        print(self.evaluate(answer).message)

    def hint(self, level: int | None = None) -> None:
        """Print a hint; a second call prints a stronger one (``hint(2)`` asks for it directly, as in learntools)."""
        if level is None:
            level = min(self._hints_given, len(self.hints) - 1)
            self._hints_given += 1
        elif isinstance(level, int) and 1 <= level <= len(self.hints):
            level -= 1
        else:
            print(f"{self.name} has hints 1 to {len(self.hints)}: {self.name}.hint() or {self.name}.hint(2)")
            return
        label = "Hint" if level == 0 else "Stronger hint"
        more = f" (call {self.name}.hint() again for a stronger one)" if level == 0 else ""
        print(f"{label}{more}: {self.hints[level]}")

    def solution(self) -> None:
        """Print the reference solution."""
        print(f"Solution to {self.name}:\n{self.solution_code.strip()}")

    # --------------------------------------------------------------- for tests and notebooks
    def reference(self):
        """The reference answer: run ``solution_code`` and return ``answer_name``."""
        namespace: dict = {}
        exec(compile(self.solution_code, f"<{self.name} solution>", "exec"), namespace)  # noqa: S102
        return namespace[self.answer_name]

    def cells(self) -> list[tuple[str, str]]:
        """The notebook cells of this exercise: [(cell_type, source), ...]."""
        return [("markdown", f"### Exercise {self.name[2:]}: {self.title}\n\n{textwrap.dedent(self.prompt).strip()}"),
                ("code", textwrap.dedent(self.starter).strip())]

    def __repr__(self) -> str:
        return f"<Exercise {self.name}: {self.title}; {self.name}.check(...), .hint(), .solution()>"


def letter_checker(correct: str, wrong: Mapping[str, str], choices: str = "ABCD") -> Callable[[object], str | None]:
    """A checker for a multiple-choice answer: ``wrong`` maps each wrong letter to why it is wrong."""

    def check(answer) -> None:
        if not isinstance(answer, str) or answer.strip().upper() not in choices:
            raise Wrong(f"answer with one letter among {', '.join(choices)} (a string, e.g. 'A'), got {answer!r}")
        letter = answer.strip().upper()
        if letter != correct:
            raise Wrong(wrong[letter])

    return check
