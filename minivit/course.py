"""Where the course lives on GitHub: the one setting a fork changes, and a command that changes it.

``REPOSITORY`` is the GitHub ``owner/name`` that Colab installs minivit from and that the
"Open in Colab" badges open. It is written in several places of a checkout, which must agree:

* ``COURSE_REPO = "owner/name"`` in the first code cell of every notebook (the Colab install);
* the Colab badge URLs in every notebook's first markdown cell and in ``README.md``;
* ``REPOSITORY`` in this file;
* the URLs of ``[project.urls]`` in ``pyproject.toml``.

A fork changes all of them at once, then checks them::

    python -m minivit.course --set-repository OWNER/NAME   # rewrites the checkout
    python -m minivit.course --check                       # exit status 1 if any place disagrees

Notebooks are rewritten with a JSON round-trip in Jupyter's own format (indent 1, non-ASCII kept,
a final newline), so nothing changes in them but the repository's name.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

REPOSITORY = "minivit-course/minivit"

#: A GitHub ``owner/name``: the owner is letters, digits and single hyphens; the name also has ``.`` and ``_``.
REPOSITORY_PATTERN = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}"
_REPO = rf"(?P<repo>{REPOSITORY_PATTERN})"
_END = r"(?![A-Za-z0-9._-])"  # the name ends here, so "owner/minivit" never matches "owner/minivit-extra"

#: ``COURSE_REPO = "owner/name"`` at the start of a line of a notebook's first code cell.
COURSE_REPO_LINE = re.compile(r"^(?P<lead>[ \t]*COURSE_REPO[ \t]*=[ \t]*)(?P<q>[\"'])(?P<repo>[^\"'\n]*)(?P=q)", re.M)
#: A Colab URL of a notebook on GitHub: ``https://colab.research.google.com/github/owner/name/blob/...``.
COLAB_URL = re.compile(
    rf"(?P<lead>colab\.research\.google\.com/github/){_REPO}"
    r"(?P<tail>/blob/(?P<branch>[^/\s)\"']+)/(?P<path>[^\s)\"'#?]+))"
)
#: A pip requirement from GitHub: ``git+https://github.com/owner/name``.
PIP_URL = re.compile(rf"(?P<lead>git\+https://github\.com/){_REPO}{_END}")
#: ``REPOSITORY = "owner/name"`` in this file.
REPOSITORY_LINE = re.compile(r"^(?P<lead>REPOSITORY[ \t]*=[ \t]*)(?P<q>\")(?P<repo>[^\"\n]*)(?P=q)", re.M)
#: A GitHub URL in ``pyproject.toml``'s ``[project.urls]`` table.
GITHUB_URL = re.compile(rf"(?P<lead>https://github\.com/){_REPO}{_END}")


def pip_spec(repository: str | None = None) -> str:
    """What pip installs minivit from: ``git+https://github.com/<repository>`` (default :data:`REPOSITORY`)."""
    return f"git+https://github.com/{repository or REPOSITORY}"


def colab_url(notebook: str, repository: str | None = None, branch: str = "main") -> str:
    """The "Open in Colab" URL of ``notebooks/<notebook>`` in ``repository`` (default :data:`REPOSITORY`)."""
    return f"https://colab.research.google.com/github/{repository or REPOSITORY}/blob/{branch}/notebooks/{notebook}"


@dataclass(frozen=True)
class Mention:
    """One place of a checkout that names the repository: ``where`` (file, cell) and what it says."""

    where: str
    kind: str
    repository: str
    detail: str = ""


def default_root() -> Path | None:
    """The checkout this module was imported from, or None for an installed minivit."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() and (root / "notebooks").is_dir() else None


def _notebooks(root: Path) -> list[Path]:
    return sorted((root / "notebooks").glob("[0-9]*.ipynb"))


def _solution_notebooks(root: Path) -> list[Path]:
    """The exercises' solution notebooks: their setup cell names the repository too (no badge needed)."""
    return sorted((root / "notebooks" / "solutions").glob("*.ipynb"))


def _first_cell(cells: list[dict], cell_type: str) -> int | None:
    return next((i for i, cell in enumerate(cells) if cell.get("cell_type") == cell_type), None)


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _table(text: str, name: str) -> tuple[int, int] | None:
    """Start and end offsets of the TOML table ``[name]``'s body in ``text``, or None."""
    header = re.search(rf"^\[{re.escape(name)}\][ \t]*(?:#.*)?$", text, re.M)
    if header is None:
        return None
    following = re.search(r"^\[", text[header.end():], re.M)
    return header.end(), header.end() + following.start() if following else len(text)


def find_mentions(root: str | Path) -> tuple[list[Mention], list[str]]:
    """Every place of the checkout at ``root`` that names the repository, and the places missing one."""
    root = Path(root)
    mentions, missing = [], []
    for path in _notebooks(root):
        name = f"notebooks/{path.name}"
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        code, markdown = _first_cell(cells, "code"), _first_cell(cells, "markdown")
        lines = COURSE_REPO_LINE.findall(_source(cells[code])) if code is not None else []
        if len(lines) != 1:
            missing.append(
                f"{name}: its first code cell has {len(lines)} COURSE_REPO = \"owner/name\" lines (1 expected)"
            )
        badges = []
        for index, cell in enumerate(cells):
            where = f"{name} cell {index}"
            text = _source(cell)
            if cell.get("cell_type") == "code":
                mentions += [Mention(where, "COURSE_REPO", m.group("repo")) for m in COURSE_REPO_LINE.finditer(text)]
                mentions += [Mention(where, "pip URL", m.group("repo")) for m in PIP_URL.finditer(text)]
            for match in COLAB_URL.finditer(text):
                mentions.append(Mention(where, "Colab URL", match.group("repo"), match.group("path")))
                if index == markdown:
                    badges.append(match.group("path"))
        if f"notebooks/{path.name}" not in badges:
            missing.append(f"{name}: its first markdown cell has no Colab badge for notebooks/{path.name}")
    for path in _solution_notebooks(root):
        for index, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"]):
            if cell.get("cell_type") == "code":
                where = f"{path.relative_to(root).as_posix()} cell {index}"
                mentions += [Mention(where, "COURSE_REPO", m.group("repo"))
                             for m in COURSE_REPO_LINE.finditer(_source(cell))]
    readme = root / "README.md"
    readme_badges = set()
    if readme.is_file():
        text = readme.read_text(encoding="utf-8")
        for match in COLAB_URL.finditer(text):
            mentions.append(Mention("README.md", "Colab URL", match.group("repo"), match.group("path")))
            readme_badges.add(match.group("path"))
        mentions += [Mention("README.md", "pip URL", m.group("repo")) for m in PIP_URL.finditer(text)]
        for path in _notebooks(root):
            if f"notebooks/{path.name}" not in readme_badges:
                missing.append(f"README.md: no Colab badge for notebooks/{path.name}")
    else:
        missing.append("README.md is missing")
    for path in sorted(readme_badges - {f"notebooks/{p.name}" for p in _notebooks(root)}):
        missing.append(f"README.md: a Colab badge opens {path}, which does not exist")
    course = root / "minivit" / "course.py"
    found = REPOSITORY_LINE.findall(course.read_text(encoding="utf-8")) if course.is_file() else []
    mentions += [Mention("minivit/course.py", "REPOSITORY", m[2]) for m in found]
    if len(found) != 1:
        missing.append(f"minivit/course.py: {len(found)} REPOSITORY = \"owner/name\" lines (1 expected)")
    pyproject = root / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8") if pyproject.is_file() else ""
    table = _table(text, "project.urls")
    urls = list(GITHUB_URL.finditer(text, *table)) if table else []
    mentions += [Mention("pyproject.toml [project.urls]", "GitHub URL", m.group("repo")) for m in urls]
    if not urls:
        missing.append("pyproject.toml: no GitHub URL in [project.urls]")
    return mentions, missing


def _repository_of(root: Path) -> str | None:
    course = root / "minivit" / "course.py"
    match = REPOSITORY_LINE.search(course.read_text(encoding="utf-8")) if course.is_file() else None
    return match.group("repo") if match else None


def check(root: str | Path | None = None) -> list[str]:
    """The disagreements of the checkout at ``root`` (default: this one): an empty list when all agree.

    Every place must name the ``REPOSITORY`` of that checkout's ``minivit/course.py``, and every
    place that should name it must be there (one ``COURSE_REPO`` line per notebook, its badge, ...).
    """
    root = Path(root) if root is not None else _require_root()
    expected = _repository_of(root)
    mentions, problems = find_mentions(root)
    for mention in mentions:
        if mention.repository != expected:
            detail = f" ({mention.detail})" if mention.detail else ""
            problems.append(f"{mention.where}: {mention.kind}{detail} names {mention.repository!r}, not {expected!r}")
    return problems


def _rewrite(text: str, repository: str, patterns: list[re.Pattern]) -> tuple[str, int]:
    """``text`` with the ``repo`` group of every match of ``patterns`` replaced; and how many changed."""
    changed = 0

    def replace(match: re.Match) -> str:
        nonlocal changed
        changed += match.group("repo") != repository
        start, end = match.start("repo") - match.start(), match.end("repo") - match.start()
        return match.group(0)[:start] + repository + match.group(0)[end:]

    for pattern in patterns:
        text = pattern.sub(replace, text)
    return text, changed


def _rewrite_notebook(path: Path, repository: str) -> int:
    notebook = json.loads(path.read_text(encoding="utf-8"))
    changed = 0
    for cell in notebook["cells"]:
        patterns = [COLAB_URL] + ([COURSE_REPO_LINE, PIP_URL] if cell.get("cell_type") == "code" else [])
        source = cell.get("source", "")
        lines = source if isinstance(source, list) else [source]  # patterns never span lines
        new_lines = []
        for line in lines:
            new_line, count = _rewrite(line, repository, patterns)
            new_lines.append(new_line)
            changed += count
        cell["source"] = new_lines if isinstance(source, list) else new_lines[0]
    if changed:
        with open(path, "w", encoding="utf-8", newline="") as file:
            file.write(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
    return changed


def _rewrite_text(path: Path, repository: str, patterns: list[re.Pattern], table: str | None = None) -> int:
    with open(path, encoding="utf-8", newline="") as file:  # keep line endings as they are
        text = file.read()
    start, end = (0, len(text)) if table is None else (_table(text, table) or (0, 0))
    body, count = _rewrite(text[start:end], repository, patterns)
    if count:
        with open(path, "w", encoding="utf-8", newline="") as file:
            file.write(text[:start] + body + text[end:])
    return count


def set_repository(repository: str, root: str | Path | None = None) -> dict[str, int]:
    """Make every place of the checkout at ``root`` (default: this one) name ``repository``.

    Returns how many places changed, by file. ``repository`` is a GitHub ``owner/name``.
    """
    if not re.fullmatch(REPOSITORY_PATTERN, repository) or repository.endswith(".git"):
        raise ValueError(f"{repository!r} is not a GitHub owner/name such as 'someone/minivit'")
    root = Path(root) if root is not None else _require_root()
    changed = {}
    for path in _notebooks(root) + _solution_notebooks(root):
        changed[path.relative_to(root).as_posix()] = _rewrite_notebook(path, repository)
    if (root / "README.md").is_file():
        changed["README.md"] = _rewrite_text(root / "README.md", repository, [COLAB_URL, PIP_URL])
    if (root / "minivit" / "course.py").is_file():
        changed["minivit/course.py"] = _rewrite_text(root / "minivit" / "course.py", repository, [REPOSITORY_LINE])
    if (root / "pyproject.toml").is_file():
        changed["pyproject.toml"] = _rewrite_text(root / "pyproject.toml", repository, [GITHUB_URL], "project.urls")
    return changed


def _require_root() -> Path:
    root = default_root()
    if root is None:
        raise SystemExit("minivit is installed as a package, not imported from a checkout: pass --root PATH")
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m minivit.course",
        description="Show, check or change the GitHub repository (owner/name) the course installs from.",
    )
    parser.add_argument("--set-repository", metavar="OWNER/NAME", help="rewrite every place that names it")
    parser.add_argument("--check", action="store_true", help="exit with status 1 if any place disagrees")
    parser.add_argument("--root", type=Path, help="the checkout (default: the one minivit is imported from)")
    args = parser.parse_args(argv)
    root = args.root or _require_root()
    if args.set_repository:
        try:
            changed = set_repository(args.set_repository, root)
        except ValueError as error:
            parser.error(str(error))
        for name, count in changed.items():
            if count:
                print(f"{name}: {count} place(s) changed")
        print(f"{sum(changed.values())} place(s) in {sum(map(bool, changed.values()))} file(s) now name "
              f"{args.set_repository}")
    if args.check or not args.set_repository:
        problems = check(root)
        if problems:
            print(f"{len(problems)} problem(s) against REPOSITORY = {_repository_of(root)!r} of minivit/course.py:")
            print("\n".join(f"  {problem}" for problem in problems))
            return 1
        print(f"every place names {_repository_of(root)} (pip: {pip_spec(_repository_of(root))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
