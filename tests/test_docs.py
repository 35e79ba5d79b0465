"""The documentation holds together: README.md stays a front door, and every link, path and layout line is true."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import REPO

README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "bench").glob("*.md"))]
PROSE = [README, *sorted((REPO / "docs").glob("*.md"))]  # bench/ results are records: their paths are historical

FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"`[^`]*`")
REPO_PATH = re.compile(r"(?<![\w./-])((?:src|bench|tests)/(?:[\w-]+/)*(?:[\w-]+(?:\.\w+)?)?)")
DOTTED = re.compile(r"(?<![\w./-])(src(?:\.\w+)+)")


def prose_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines outside fenced code blocks."""
    out, fenced = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            out.append((number, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower case, punctuation dropped, spaces -> hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: their text
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file, repeated headings numbered -1, -2, ... as GitHub does."""
    occurrences: dict[str, int] = {}
    for _, line in prose_lines(path):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = anchor = slug(match.group(1))
            while anchor in occurrences:
                occurrences[base] += 1
                anchor = f"{base}-{occurrences[base]}"
            occurrences[anchor] = 0
    return set(occurrences)


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every markdown link and image outside code."""
    return [(n, m.group(1)) for n, line in prose_lines(path) for m in LINK.finditer(INLINE_CODE.sub("", line))]


def test_anchor_slugs_follow_github() -> None:
    """Slugs by GitHub's rule, checked on headings whose anchors are hand-derivable."""
    assert slug("Fast inference, export, profiling and pictures") == "fast-inference-export-profiling-and-pictures"
    assert slug("2026-11-25: `python3 bench/preprocess.py`") == "2026-11-25-python3-benchpreprocesspy"
    assert slug("Fréchet Video Distance") == "fréchet-video-distance"
    assert slug("Speed: `bench/flow.py`") == "speed-benchflowpy"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path) -> None:
    """Every relative link and image resolves to a file of the repository, and every #anchor to a heading there."""
    broken = []
    for number, target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        where = f"{page.relative_to(REPO)}:{number}: {target}"
        if not dest.exists():
            broken.append(f"{where} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{where} (no heading with this anchor in {dest.name})")
    assert not broken, "\n".join(broken)


def layout_section(text: str) -> str:
    """The README's '## Layout' section."""
    match = re.search(r"^## Layout\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, "README.md has no '## Layout' section"
    return match.group(1)


def test_readme_layout_lists_every_package_and_module() -> None:
    """The layout has a line (- `src/...` — ...) for every package of src/ (a folder with __init__.py) and top-level module."""
    listed = set(re.findall(r"^- `(src/[^`]+)`", layout_section(README.read_text(encoding="utf-8")), re.M))
    src = REPO / "src"
    packages = {f"src/{p.parent.relative_to(src).as_posix()}/" for p in src.rglob("__init__.py") if p.parent != src}
    modules = {f"src/{p.name}" for p in src.glob("*.py") if p.name != "__init__.py"}
    missing = sorted((packages | modules) - listed)
    assert not missing, f"README.md's layout lacks a line for: {', '.join(missing)}"


def test_readme_is_a_front_door() -> None:
    """README.md fits on a few screens (at most ~150 lines)."""
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; move detail to docs/"


@pytest.mark.parametrize("command", ["pip install -r requirements.txt && python quickstart.py", "python -m pytest -q -n 2"])
def test_readme_setup_commands(command: str) -> None:
    """The set-up commands .ci/run greps for, each alone in its own bash block, and the first line its grep finds."""
    lines = README.read_text(encoding="utf-8").splitlines()
    assert command in lines, f"README.md lacks the line {command!r}"
    i = lines.index(command)
    assert lines[i - 1] == "```bash" and lines[i + 1] == "```", f"{command!r} is not alone in a ```bash block"
    prefix = " ".join(command.split()[:3])  # what .ci/run greps: '^pip install -r' / '^python -m pytest'
    assert next(line for line in lines if line.startswith(prefix)) == command


def defined_names(path: Path) -> set[str]:
    """Names a module binds at its top level (definitions, assignments, imports)."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def resolves(dotted: str) -> bool:
    """Whether 'src.a.b' names a module of src/, or a name a module binds ('src.dataset.load_array')."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        base = REPO.joinpath(*parts[:cut])
        module = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
        if module.is_file() or (cut == 1 and base.is_dir()):
            rest = parts[cut:]
            return not rest or (len(rest) == 1 and module.is_file() and rest[0] in defined_names(module))
    return False


@pytest.mark.parametrize("page", PROSE, ids=lambda p: str(p.relative_to(REPO)))
def test_paths_and_modules_named_exist(page: Path) -> None:
    """Every src/, bench/ or tests/ path and every src.module(.name) a page names exists (README's layout aside)."""
    text = page.read_text(encoding="utf-8")
    if page == README:
        text = text.replace(layout_section(text), "")  # the layout may announce a package that lands later
    stale = sorted({p for p in REPO_PATH.findall(text) if not (REPO / p).exists()})
    stale += sorted({d for d in DOTTED.findall(text) if not resolves(d)})
    assert not stale, f"{page.relative_to(REPO)} names what does not exist: {', '.join(stale)}"
