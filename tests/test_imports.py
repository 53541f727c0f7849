"""The import structure: no cycles, data/ and the launchers import only downwards, and the light
entry points (the CLI's preflight, the records, the configs) never load torch."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out: set[str] = set()
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    for node in nodes:
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    return out


def _graph(top_level_only: bool) -> dict[str, set[str]]:
    files = [*SRC.glob("qat_lab/**/*.py"), *SRC.glob("hydra_plugins/qat_lab_launchers/*.py")]
    modules = {_module_name(f): f for f in files}
    return {m: {i for i in _imports(f, top_level_only) if i in modules and i != m} for m, f in modules.items()}


def test_no_import_cycles():
    # Imports inside functions count too: a lazy import that closes a cycle only hides it.
    graph = _graph(top_level_only=False)
    state: dict[str, int] = {}
    cycles = []

    def visit(node, trail):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt])
            elif not state.get(nxt):
                visit(nxt, trail + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if not state.get(node):
            visit(node, [node])
    assert not cycles, cycles


def _reaches(graph, start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_data_and_the_launchers_import_only_downwards():
    graph = _graph(top_level_only=False)  # lazy imports inside functions count too
    upward = {"qat_lab.train", "qat_lab.summary", "qat_lab.jobs", "qat_lab.cli", "qat_lab.module"}
    for module in graph:
        if module.startswith("qat_lab.data"):
            assert not (graph[module] & (upward | {"qat_lab.config"})), (module, graph[module])
        # The records and the Slurm launcher (it writes records for jobs Slurm killed) never reach
        # training code or the config layer (a never-started record is read off the composed
        # config); the local launcher runs jobs, so it may.
        if module.startswith("qat_lab.records") or module == "hydra_plugins.qat_lab_launchers.slurm":
            reached = _reaches(graph, module) & (upward | {"qat_lab.config"})
            assert not reached, (module, reached)


def test_light_entry_points_do_not_load_torch_or_lightning():
    code = ("import sys; import qat_lab.cli, qat_lab.config, qat_lab.records, qat_lab.summary, qat_lab.validation, "
            "qat_lab.data.check, hydra_plugins.qat_lab_launchers.slurm; "
            "heavy = [m for m in ('torch', 'lightning', 'pandas', 'wandb') if m in sys.modules]; "
            "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


# A bit-width set into a quant dict by hand: `{**quant, "bits": b}` or `quant["bits"] = b`.
QUANT_DICT_GETS_BITS = re.compile(r"""\*\*\w*quant\w*\s*,\s*["']bits["']\s*:|\bquant\w*\[["']bits["']\]\s*=""")


def test_bits_is_paired_with_the_quantiser_settings_only_in_its_config():
    offenders = []
    for f in SRC.glob("qat_lab/**/*.py"):
        text = f.read_text()
        if "spec.bits" in text or "RunSpec.bits" in text:
            offenders.append(str(f))
        if f.relative_to(SRC).as_posix() != "qat_lab/quant/config.py" and QUANT_DICT_GETS_BITS.search(text):
            offenders.append(f"{f}: bits set into a quant dict")
    assert not offenders, offenders


def test_the_bits_pairing_pattern_catches_a_hand_made_quant_config():
    assert QUANT_DICT_GETS_BITS.search('build_dataclass({**quant, "bits": int(bits)}, "quant", QuantConfig)')
    assert QUANT_DICT_GETS_BITS.search("quant_cfg['bits'] = axes['bits']")
    assert not QUANT_DICT_GETS_BITS.search('replace(qcfg, bits=b)')  # PTQ at another grid, not a re-pairing
