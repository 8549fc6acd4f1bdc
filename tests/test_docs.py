"""The repository explains itself: every file a document, docstring, comment or config points to
exists (and every section a Markdown link names), no text points outside the repository, and
none cites an issue tracker a reader cannot see."""
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TEXT = (".md", ".py", ".toml", ".json", ".sh", ".cfg", ".ini", ".txt")

# A path inside the repository: a top-level folder of it, then names (no placeholders such as
# <name> or {split}, which stop the match), ending in a file type.
PATH = re.compile(r"(?<![\w./-])((?:repro|data_prep|tests|benchmarks|paper_configs|docs|results|\.ci)"
                  r"/[\w./-]*\w\.(?:py|md|toml|json|sh|png|txt))\b")
BARE_MD = re.compile(r"(?<![\w./-])([A-Z][A-Z_]+\.md)\b")  # a bare upper-case name such as README.md
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
TEST = re.compile(r"\b(test_\w+\.py)::(\w+)")  # tests/test_x.py::test_name
ISSUE = re.compile(r"\b(?:issues?|tickets?) ?#?\d+\b", re.IGNORECASE)
OUTSIDE = re.compile(r"\.\./shared\b")


def tracked_text_files() -> list[Path]:
    """The repository's text files: git's list, or, without git or outside a checkout (a copy or
    an unpacked archive of the repository), the tree less what .gitignore leaves out."""
    try:
        out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
        names = out.splitlines()
    except (OSError, subprocess.CalledProcessError):
        names = tree_files()
    files = [REPO / f for f in names if f.endswith(TEXT) or f in (".ci/run", "run.sh")]
    return [f for f in files if f.is_file() and f != Path(__file__)]  # not this file's own examples


def tree_files() -> list[str]:
    return sorted(p.relative_to(REPO).as_posix() for p in REPO.rglob("*")
                  if p.is_file() and not _ignored(p.relative_to(REPO)))


def test_the_file_list_without_git_is_what_git_would_list():
    """tree_files (used where there is no git) gives git's tracked and untracked, not ignored, files."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-per-directory=.gitignore"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("no git here to compare with (this is the case tree_files is for)")
    assert tree_files() == sorted(f for f in set(out.splitlines()) if (REPO / f).is_file())


def _ignored(rel: Path) -> bool:
    """What .gitignore leaves out (its patterns, copied here by hand: the test above fails when
    the two part), git's own folder, and tools' caches that ignore themselves with a .gitignore
    of "*", for the list without git."""
    parts = rel.parts
    return (parts[0] in (".git", "data", "runs", ".pytest_cache") or rel.as_posix().startswith("results/demo-smoke/")
            or any(p == ".venv" or p.startswith(".venv-") or p == "__pycache__" or p.endswith(".egg-info")
                   for p in parts) or rel.name.endswith(".partial")
            or any(_ignores_itself(REPO.joinpath(*parts[:i])) for i in range(1, len(parts))))


def _ignores_itself(folder: Path) -> bool:
    ignore = folder / ".gitignore"
    return ignore.is_file() and "*" in ignore.read_text().split()


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(md: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", md.read_text(), re.MULTILINE)}


def test_the_checks_find_what_they_look_for(tmp_path):
    """The patterns below catch what they are meant to (else the real test would pass vacuously)."""
    # The examples are put together here, so that this file names no document itself.
    gone, outside = "GONE" + ".md", "/".join(["..", "shared", "notes"])
    text = f"see {gone}, repro/nothing_here.py, [x](docs/gone.md), issue 7 and {outside}"
    assert BARE_MD.findall(text) == [gone] and PATH.findall(text) == ["repro/nothing_here.py", "docs/gone.md"]
    assert LINK.findall(text) == ["docs/gone.md"] and ISSUE.search(text) and OUTSIDE.search(text)
    assert TEST.findall("tests/test_lrn.py::test_gone") == [("test_lrn.py", "test_gone")]
    assert not PATH.findall("results/<name>/report.md benchmarks/bench_<name>.py") and not ISSUE.search("tissue 3")
    assert slug("Where the paper's text and code 145 differ") == "where-the-papers-text-and-code-145-differ"
    assert len(tracked_text_files()) > 50


def test_every_reference_points_to_something_that_exists():
    problems = []
    for f in tracked_text_files():
        rel = f.relative_to(REPO)
        for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            where = f"{rel}:{n}"
            for target in PATH.findall(line):
                if not (REPO / target).exists():
                    problems.append(f"{where}: {target} does not exist")
            for module, test in TEST.findall(line):
                path = REPO / "tests" / module
                if not path.is_file() or not re.search(rf"^(?:async )?def {test}\(", path.read_text(), re.MULTILINE):
                    problems.append(f"{where}: no test {test} in tests/{module}")
            for name in BARE_MD.findall(line):
                if not (REPO / name).exists() and not (f.parent / name).exists():
                    problems.append(f"{where}: {name} is not in the repository")
            if OUTSIDE.search(line):
                problems.append(f"{where}: points outside the repository ({OUTSIDE.search(line).group(0)})")
            if ISSUE.search(line):
                problems.append(f"{where}: cites an issue tracker readers cannot see: {ISSUE.search(line).group(0)!r}")
            if f.suffix != ".md":
                continue
            for link in LINK.findall(line):
                if re.match(r"^[a-z]+:", link):  # http:, https:, mailto:
                    continue
                path, _, anchor = link.partition("#")
                target = (f.parent / path).resolve() if path else f
                if not target.exists():
                    problems.append(f"{where}: link to {link}, which does not exist")
                elif anchor and target.suffix == ".md" and anchor not in anchors(target):
                    problems.append(f"{where}: link to #{anchor}, no such heading in {target.relative_to(REPO)}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("doc", ["docs/fidelity.md", "docs/architecture.md", "docs/reproducing.md", "docs/faults.md"])
def test_the_documents_exist_and_the_readme_links_them(doc):
    assert (REPO / doc).is_file()
    assert f"({doc})" in (REPO / "README.md").read_text()


def test_the_readmes_layout_names_every_module():
    """A newcomer finds each part from the README's Layout: every module of the project (and every
    helper of the tests) has its line there, under its folder."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    listed: dict[str, set[str]] = {}
    folder = ""
    for line in block.splitlines():
        if line[:1].strip() and line.split()[0].endswith("/"):  # a folder's line: repro/, repro/fast/, ...
            folder = line.split()[0].rstrip("/")
        listed.setdefault(folder, set()).update(re.findall(r"\b([a-z_0-9]+\.py)\b", line))
    missing = []
    for where in ("repro", "repro/fast", "data_prep", "tests"):
        for f in sorted((REPO / where).glob("*.py")):
            if f.name in ("__init__.py", "__main__.py", "conftest.py") or f.name.startswith("test_"):
                continue
            if f.name not in listed.get(where, set()):
                missing.append(f"{where}/{f.name}")
    assert not missing, f"not in README.md's Layout: {missing}"
