"""The README is a short, true map: every setting with its true default, every route, links that resolve.

The README lists each setting once, in its environment table, as
``| `CLIP_X` | `default` | what it does |``. The default cell is the value as
the environment would spell it (``render_default``): booleans as ``true`` or
``false``, numbers as Python prints them (``3.0``, ``33554432``), strings as
they are, and the empty string as ``""``. A new setting or route fails these
tests until its row is added.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from clip_service.config import SPECS, Spec

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_README_LINES = 250

_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_CONVERTER = re.compile(r"<(?:[^:>]+:)?([^>]+)>")


def render_default(value) -> str:
    """A setting's default as the environment table shows it (without the backticks)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else '""'
    return str(value)


def prose_lines(path: Path) -> list[str]:
    """The file's lines outside fenced code blocks (code lines become empty, so numbering is kept)."""
    lines, in_code = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            in_code = not in_code
            lines.append("")
        else:
            lines.append("" if in_code else line)
    return lines


def tables(path: Path) -> list[list[list[str]]]:
    """Every markdown table of ``path``: a list of rows (the header first, the separator dropped) of cells."""
    found: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in prose_lines(path) + [""]:
        if line.lstrip().startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
            if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                current.append(cells)
        elif current:
            found.append(current)
            current = []
    return found


def table_headed(path: Path, first_header: str) -> list[list[str]]:
    """The one table of ``path`` whose first header cell is ``first_header``, without its header."""
    matches = [t for t in tables(path) if t[0][0] == first_header]
    assert len(matches) == 1, f"{path.name} must have exactly one table headed {first_header!r}"
    return matches[0][1:]


def env_names() -> dict[str, Spec]:
    return {spec.env: spec for spec in SPECS}


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of ``path``."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose_lines(path):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def test_the_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move detail to docs/"


def test_the_set_up_commands_come_first():
    text = README.read_text(encoding="utf-8")
    setup = text[text.index("## Set-up"):text.index("\n## ", text.index("## Set-up") + 1)]
    for command in ("pip install -r requirements.txt && gunicorn wsgi:app",
                    "pip install -r requirements-test.txt && python -m pytest"):
        assert f"python3 -m venv .venv && . .venv/bin/activate && {command}\n" in setup


def test_every_setting_is_in_the_environment_table_with_its_true_default():
    rows = {row[0]: row for row in table_headed(README, "Variable")}
    for name, f in env_names().items():
        expected = f"`{render_default(f.default)}`"
        assert f"`{name}`" in rows, f"add to README.md's environment table: | `{name}` | {expected} | ... |"
        row = rows[f"`{name}`"]
        assert len(row) == 3 and row[2], f"{name}: the row needs a default and a description"
        assert row[1] == expected, f"{name}: the README says {row[1]}, the code's default is {expected}"
        assert f.doc, f"{name} has no doc in clip_service/config.py"


def test_the_environment_table_holds_each_setting_once_and_nothing_else():
    names = [row[0] for row in table_headed(README, "Variable")]
    assert len(names) == len(set(names)), "a variable is listed twice"
    assert set(names) == {f"`{n}`" for n in env_names()}, "a row names no setting of clip_service/config.py"


def test_settings_that_accept_zero_say_so():
    rows = {row[0]: row for row in table_headed(README, "Variable")}
    for name, f in env_names().items():
        says_zero = "`0` accepted" in rows[f"`{name}`"][2]
        accepts_zero = f.minimum is not None and f.minimum <= 0
        assert says_zero == accepts_zero, f"{name}: say '`0` accepted' exactly when Settings accepts 0"


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_no_variable_is_listed_in_a_second_table(path):
    names = {f"`{n}`" for n in env_names()}
    for table in tables(path):
        if path == README and table[0][0] == "Variable":
            continue
        assert not any(h.lower().startswith("default") for h in table[0]), \
            f"{path.name}: defaults belong in README.md's environment table only"
        listed = names & {row[0] for row in table[1:]}
        assert not listed, f"{path.name}: {sorted(listed)} listed outside README.md's environment table"


def test_every_route_is_in_the_routes_table(tiny_embedder):
    from clip_service import create_app

    app = create_app({"TESTING": True, "weaviate": True}, embedder=tiny_embedder)  # the optional routes too
    documented = set()
    for row in table_headed(README, "Route"):
        match = re.fullmatch(r"`([A-Z]+) (/\S*)`", row[0])
        assert match, f"a route row starts with `METHOD /path`, not {row[0]}"
        documented.add((match.group(1), match.group(2)))
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            # Flask's built-in static route; the package has no static folder, so it only answers 404.
            assert not Path(app.static_folder).exists()
            continue
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            routes.add((method, _CONVERTER.sub(r"{\1}", rule.rule)))
    assert routes - documented == set(), "add these routes to README.md's routes table"
    assert documented - routes == set(), "README.md's routes table names routes the app does not have"


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_every_relative_link_resolves(path):
    for number, line in enumerate(prose_lines(path), 1):
        for target in _LINK.findall(re.sub(r"`[^`]*`", "", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            assert linked.exists(), f"{path.name}:{number}: {target} points to no file"
            if anchor and linked.suffix == ".md":
                assert anchor in heading_anchors(linked), f"{path.name}:{number}: {target}: no such heading"


def test_every_module_has_a_layout_row():
    rows = {row[0].strip("`") for row in table_headed(ROOT / "docs" / "architecture.md", "Module")}
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "clip_service").rglob("*.py")}
    assert modules - rows == set(), "add these modules to docs/architecture.md's layout (one line: its concern)"
    assert all((ROOT / row).exists() for row in rows), "docs/architecture.md names a module that is gone"


def _imported_modules(path: Path) -> set[str]:
    """The absolute names of the modules ``path`` imports (relative imports resolved)."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = list(package[:len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_views_reach_the_model_and_the_fetcher_only_through_the_pipeline():
    # docs/architecture.md: web/ -> pipeline.py -> model/, images/. A view that imports the
    # embedder or the fetcher has started a second copy of the pipeline.
    forbidden = ("clip_service.model.embedder", "clip_service.model.loading", "clip_service.images.fetcher",
                 "clip_service.images.http", "clip_service.runtime", "torch", "open_clip")
    offenders = {f"{path.relative_to(ROOT)}: {name}"
                 for path in (ROOT / "clip_service" / "web").rglob("*.py")
                 for name in _imported_modules(path)
                 if any(name == f or name.startswith(f + ".") for f in forbidden)}
    assert offenders == set()
