"""The README is true of the code: every `isc_qk...` name it gives exists, its module map is the
package's folders and modules, and it shows the commands the recipes really mean."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import isc_qk

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(isc_qk.__file__).parent
README = (ROOT / "README.md").read_text()


def _backticked(text: str) -> list[str]:
    """`name` and ``name`` (reStructuredText) spans."""
    return [a or b for a, b in re.findall(r"``([^`\n]+)``|`([^`\n]+)`", text)]


def _heads(text: str) -> set[str]:
    """The first name of every backticked span: `base.Encoder` -> base, `nets/` -> nets."""
    return {re.split(r"[./ (]", n, maxsplit=1)[0] for n in _backticked(text)}


def _exists(name: str) -> bool:
    """`isc_qk/a/b.py`, `isc_qk/a/`, `isc_qk.a.b` (a module) or `isc_qk.a.b.name` (an attribute)."""
    name = re.sub(r"\(.*\)$", "", name.strip())
    if "/" in name:
        return (ROOT / name.rstrip("/")).exists()
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_every_isc_qk_name_in_the_readme_exists():
    names = [n for n in _backticked(README) if re.match(r"isc_qk[./]", n)]
    assert len(names) >= 8
    missing = [n for n in names if not _exists(n)]
    assert not missing, missing


def _modules(folder: Path) -> set[str]:
    """Modules and sub-packages of a package folder (not __init__ / __main__)."""
    out = {p.stem for p in folder.glob("*.py") if not p.stem.startswith("__")}
    return out | {p.name for p in folder.iterdir() if (p / "__init__.py").is_file()}


def _map_rows() -> dict[str, str]:
    table = README[README.index("## Layout of the code"):]
    table = table[: table.index("\n\n", table.index("|---|"))]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`"):
            rows[cells[0]] = cells[1]
    return rows


def test_the_module_map_is_the_package_and_its_docstrings():
    rows = _map_rows()
    folders = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if not p.stem.startswith("__"))
    listed = {n for first in rows for n in _heads(first)}
    assert set(folders) | set(top) == listed, "README module map: folders/modules missing or stale"
    for folder in folders:
        row = next(v for k, v in rows.items() if f"`{folder}/`" in k)
        named = _heads(row)
        modules = _modules(PACKAGE / folder)
        assert modules <= named, f"{folder}/: the README row misses {sorted(modules - named)}"
        doc = importlib.import_module(f"isc_qk.{folder}").__doc__ or ""
        in_doc = _heads(doc)
        assert modules <= in_doc, f"isc_qk/{folder}/__init__.py docstring misses {sorted(modules - in_doc)}"


def test_the_readme_shows_the_sscd_recipe_as_isc_qk_recipe_prints_it():
    from isc_qk.pipeline.commands import stage_commands

    block = "\n".join(stage_commands("sscd", "../shared/minidisc", "runs/minidisc_sscd"))
    assert block in README, "README's stage-by-stage block is stale: paste `isc-qk recipe sscd ...` again"
