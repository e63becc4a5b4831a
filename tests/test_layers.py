"""The house: layers that only point down, configs that validate without loading a model.

Every import counts, those inside functions too: a deferred import that dodges a cycle is
still a cycle for a reader (issue 19)."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import isc_qk

PACKAGE = Path(isc_qk.__file__).parent
#: The bottom layers and the only parts of the package they may import.
BOTTOM = {
    "errors": set(),
    "ui": set(),  # warnings and progress bars (rich only)
    "formats": {"errors", "ui"},
    "configs": {"errors", "formats", "ui"},
    "stages": {"errors", "ui", "formats", "configs", "__init__"},
}


def _unit(module: str) -> str:
    """isc_qk.stages.rows -> stages; isc_qk.configs -> configs; isc_qk -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def import_graph() -> dict[str, dict[str, list[str]]]:
    """unit -> imported unit -> ["file:line", ...], for every import statement anywhere."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for f in PACKAGE.rglob("*.py"):
        rel = f.relative_to(PACKAGE.parent).with_suffix("")
        mod = ".".join(rel.parts)
        pkg = mod.removesuffix(".__init__") if mod.endswith(".__init__") else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    full = ".".join(base + ([node.module] if node.module else []))
                else:
                    full = node.module or ""
                targets = [f"{full}.{a.name}" for a in node.names] if full.count(".") == 0 else [full]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for t in targets:
                if t.startswith("isc_qk"):
                    a, b = _unit(mod), _unit(t)
                    if a != b:
                        graph[a][b].append(f"{f.relative_to(PACKAGE.parent)}:{node.lineno}")
    return graph


def test_no_two_folders_import_each_other():
    g = import_graph()
    cycles = sorted({tuple(sorted((a, b))) for a in g for b in g[a] if a in g.get(b, {})})
    assert not cycles, {f"{a} <-> {b}": g[a][b][:2] + g[b][a][:2] for a, b in cycles}


def test_the_bottom_layers_import_nothing_above_them():
    g = import_graph()
    for unit, allowed in BOTTOM.items():
        above = {b: where[:2] for b, where in g.get(unit, {}).items() if b not in allowed and b != "__version__"}
        assert not above, f"{unit} imports {above}"


def test_validating_a_config_never_loads_a_model():
    """ModelConfig.validate checks values; the stages' name check parses the name only."""
    code = (
        "import sys\n"
        "from isc_qk.configs import ModelConfig, PipelineConfig\n"
        "from isc_qk.models.qk_model import check_model_config\n"
        "from isc_qk.recipes import RECIPES\n"
        "cfg = ModelConfig(backbone='onnx:/nowhere/model.onnx', residual='sscd@sq288')\n"
        "cfg.validate(); check_model_config(cfg)\n"
        "for r in RECIPES.values(): r.config().validate(); check_model_config(r.config().model)\n"
        "print(sorted(m for m in ('tensorflow', 'keras', 'onnxruntime') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
