"""The install source (minivit.course): one repository name, written in every place that needs it.

The non-editable install itself (a wheel in a fresh virtual environment running chapter 1) is
checked by ``.ci/wheel_install_check.sh``, which CI runs before the test suite.
"""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from minivit import course

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
FORK = "some-one/my.fork"

FIRST_CODE_CELL = '''\
# Setup: PROFILE and DEVICE are the two settings of this notebook; on Colab this cell also installs minivit
# from COURSE_REPO (a fork changes it here, or in every notebook at once with
# `python -m minivit.course --set-repository OWNER/NAME`). Colab's own torch is kept.
PROFILE = None  # None: "gpu" when a GPU is found, else "cpu"; or "smoke" (seconds), "cpu", "gpu"
DEVICE = None  # None: the best one found; or "cpu", "cuda", "mps"
COURSE_REPO = "minivit-course/minivit"
import sys
if "google.colab" in sys.modules:
    %pip install -q "minivit @ git+https://github.com/{COURSE_REPO}"
import minivit
minivit.setup(profile=PROFILE, device=DEVICE)
'''


def copy_checkout(target):
    """The files that name the repository, copied from this checkout."""
    for name in ("README.md", "pyproject.toml"):
        shutil.copy(REPOSITORY_ROOT / name, target / name)
    shutil.copytree(REPOSITORY_ROOT / "notebooks", target / "notebooks",
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    (target / "minivit").mkdir()
    shutil.copy(REPOSITORY_ROOT / "minivit" / "course.py", target / "minivit" / "course.py")
    return sorted(p.relative_to(target) for p in target.rglob("*") if p.is_file())


def test_pip_spec_and_colab_url():
    assert course.pip_spec() == f"git+https://github.com/{course.REPOSITORY}"
    assert course.pip_spec(FORK) == "git+https://github.com/some-one/my.fork"
    assert course.colab_url("01_convolution_refresher.ipynb", FORK) == (
        "https://colab.research.google.com/github/some-one/my.fork/blob/main/notebooks/01_convolution_refresher.ipynb"
    )


def test_course_repo_line_of_the_first_cell():
    lines = [m.group("repo") for m in course.COURSE_REPO_LINE.finditer(FIRST_CODE_CELL)]
    assert lines == ["minivit-course/minivit"]
    assert not course.PIP_URL.search(FIRST_CODE_CELL)  # git+https://github.com/{COURSE_REPO} is no name
    assert course.PIP_URL.search('%pip install "minivit @ git+https://github.com/a-b/c.d"').group("repo") == "a-b/c.d"
    assert course.PIP_URL.search("git+https://github.com/a/minivit-extra").group("repo") == "a/minivit-extra"


def test_every_place_of_this_checkout_agrees(capsys):
    assert course.check(REPOSITORY_ROOT) == []
    assert course.main(["--check", "--root", str(REPOSITORY_ROOT)]) == 0
    assert f"every place names {course.REPOSITORY}" in capsys.readouterr().out


def test_check_on_the_command_line():
    result = subprocess.run(
        [sys.executable, "-m", "minivit.course", "--check"], cwd=REPOSITORY_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_set_repository_rewrites_only_the_names(tmp_path, capsys):
    files = copy_checkout(tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in files}
    problems_before = course.check(tmp_path)
    assert course.main(["--root", str(tmp_path), "--set-repository", FORK]) == 0
    changed = course.set_repository(FORK, tmp_path)  # a second run changes nothing
    assert sum(changed.values()) == 0
    printed = capsys.readouterr().out
    assert f"now name {FORK}" in printed
    for name in files:
        after = (tmp_path / name).read_bytes()
        assert b"minivit-course/minivit" not in after, name
        # byte-identical apart from the name: formatting, key order, non-ASCII and final newline kept
        assert after.replace(FORK.encode(), b"minivit-course/minivit") == before[name], name
    assert course.check(tmp_path) == problems_before
    assert b'COURSE_REPO = \\"some-one/my.fork\\"' in (
        tmp_path / "notebooks" / "01_convolution_refresher.ipynb").read_bytes()
    assert b'Issues = "https://github.com/some-one/my.fork/issues"' in (tmp_path / "pyproject.toml").read_bytes()
    course.set_repository("minivit-course/minivit", tmp_path)  # and back
    assert all((tmp_path / name).read_bytes() == before[name] for name in files)


def test_check_lists_disagreements(tmp_path, capsys):
    copy_checkout(tmp_path)
    notebook = tmp_path / "notebooks" / "03_vit_patch_embedding.ipynb"
    notebook.write_bytes(notebook.read_bytes().replace(b"minivit-course/minivit", b"someone/else", 1))
    readme = tmp_path / "README.md"
    readme.write_text(readme.read_text().replace("notebooks/07_attention_maps.ipynb", "notebooks/08_missing.ipynb"))
    problems = course.check(tmp_path)
    assert any(p.startswith("notebooks/03_vit_patch_embedding.ipynb cell 0") and "'someone/else'" in p
               for p in problems)
    assert "README.md: no Colab badge for notebooks/07_attention_maps.ipynb" in problems
    assert "README.md: a Colab badge opens notebooks/08_missing.ipynb, which does not exist" in problems
    assert course.main(["--check", "--root", str(tmp_path)]) == 1
    assert "someone/else" in capsys.readouterr().out


def test_set_repository_refuses_what_is_no_github_name(tmp_path):
    for bad in ("minivit", "a/b/c", "https://github.com/a/b", "-a/b", "a/b.git", "a/b c"):
        with pytest.raises(ValueError, match="not a GitHub owner/name"):
            course.set_repository(bad, tmp_path)
