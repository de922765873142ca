"""The package's floor plan in figures: import cycles, layer violations, the lines the image UNet pulls in,
function lengths and the modules directly in minunet/ (issue 19). Reads the source with `ast`; imports nothing.

    python benchmarks/floorplan.py [PACKAGE_DIR]       # default: the minunet/ next to this folder

Every import counts, those inside functions too. Importing `minunet.a.b` also runs `minunet/a/__init__.py`:
the line count includes such subpackage __init__ files (not minunet/__init__.py, the public facade).
tests/test_floorplan.py asserts the rules on these figures.
"""
import ast
import statistics
import sys
from pathlib import Path

ROOT = "minunet"
# imports only look down: a module under the first prefix imports nothing under the second
LAYER_RULES = [
    ("models", ("loading", "pipelines", "cli")),
    ("blocks", ("loading", "pipelines", "cli")),
    ("loading", ("pipelines", "cli")),
    ("pipelines", ("cli",)),
    ("schedulers", ("models", "loading", "pipelines", "cli")),
]
# the flat layout before issue 19, module -> the room it belonged in (to measure the old layout by the same rules)
OLD_ROOMS = {
    "unet": "models", "video": "models", "upscaler": "models", "vae": "models", "config": "models",
    "checkpointing": "models", "random_init": "models",
    "io": "loading", "loading": "loading", "inspect": "loading", "convert": "loading", "lora": "loading",
    "text": "loading",
    "pipeline": "pipelines", "video_pipeline": "pipelines", "upscale_pipeline": "pipelines", "inpaint": "pipelines",
    "images": "pipelines", "video_io": "pipelines", "micro_conditioning": "pipelines", "parity": "pipelines",
    "checks": "pipelines",
}
UNET_MODULES = ("minunet.models.unet", "minunet.unet")


def modules(package):
    """{dotted name: path} of every .py file under `package` (a package is named by its __init__)."""
    out = {}
    for path in sorted(Path(package).rglob("*.py")):
        parts = (ROOT,) + path.relative_to(package).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _targets(name, path, node, mods):
    """Dotted names of minunet modules one import statement names (`from .x import y` names x, or x.y where y
    is a module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == ROOT]
    if node.level == 0:
        if (node.module or "").split(".")[0] != ROOT:
            return []
        base = node.module
    else:
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        here = here[:len(here) - node.level + 1]
        base = ".".join(here + ([node.module] if node.module else []))
    subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
    return subs if subs and len(subs) == len(node.names) else [base] + subs


def _known(target, mods):
    while target not in mods and "." in target:
        target = target.rsplit(".", 1)[0]
    return target if target in mods else None


def import_graph(mods):
    """{module: set of minunet modules it imports anywhere in its text}."""
    graph = {}
    for name, path in mods.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for t in _targets(name, path, node, mods):
                    t = _known(t, mods)
                    if t is not None and t not in (name, ROOT):  # ROOT: minunet.weights lives in weights/
                        edges.add(t)
        graph[name] = edges
    return graph


def cycles(graph):
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def room(name, old_rooms):
    """The room of a module: its first folder under minunet/ (in the flat layout, its entry in `old_rooms`)."""
    parts = name.split(".")
    if len(parts) < 2:
        return None
    return old_rooms.get(parts[1], parts[1]) if len(parts) == 2 else parts[1]


def ancestry(name, graph):
    """A package's parents run first: minunet.a.b imports minunet.a (not minunet itself, the facade)."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts)) if ".".join(parts[:i]) in graph]


def layer_violations(graph):
    old_rooms = {} if f"{ROOT}.models" in graph else OLD_ROOMS
    rows = []
    for m in sorted(graph):
        for layer, banned in LAYER_RULES:
            if room(m, old_rooms) != layer:
                continue
            for t in sorted(graph[m]):
                if room(t, old_rooms) in banned:
                    rows.append(f"{m} imports {t} ({layer} looks up at {room(t, old_rooms)})")
    return rows


def pulled_in(start, graph):
    """Every module importing `start` runs, transitively (subpackage __init__ files included)."""
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m in seen or m == ROOT:
            continue
        seen.add(m)
        todo += sorted(graph[m]) + ancestry(m, graph)
    return seen


def function_lengths(mods):
    """[(lines, 'path:line name')] of every function and method."""
    rows = []
    for path in mods.values():
        for n in ast.walk(ast.parse(path.read_text())):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                rows.append((n.end_lineno - n.lineno + 1, f"{path}:{n.lineno} {n.name}"))
    return rows


def lines(path):
    return len(path.read_text().splitlines())


def figures(package):
    mods = modules(package)
    graph = import_graph(mods)
    unet = next(m for m in UNET_MODULES if m in mods)
    unet_mods = pulled_in(unet, graph)
    lengths = function_lengths(mods)
    return {
        "cycles": cycles(graph),
        "layer_violations": layer_violations(graph),
        "unet_module": unet,
        "unet_modules": sorted(unet_mods),
        "unet_lines": sum(lines(mods[m]) for m in unet_mods),
        "functions": len(lengths),
        "median_function": statistics.median(n for n, _ in lengths),
        "long_functions": sorted(r for r in lengths if r[0] > 60),
        "flat_modules": sorted(p.name for p in Path(package).glob("*.py")),
    }


def main(package):
    f = figures(package)
    print(f"import cycles: {len(f['cycles'])}")
    for group in f["cycles"]:
        print("   ", " <-> ".join(group))
    print(f"layer violations: {len(f['layer_violations'])}")
    for row in f["layer_violations"]:
        print("   ", row)
    print(f"{f['unet_module']} and what it imports: {f['unet_lines']} lines in {len(f['unet_modules'])} modules")
    print("   ", ", ".join(f["unet_modules"]))
    print(f"functions: {f['functions']}, median {f['median_function']} lines, "
          f"{len(f['long_functions'])} over 60 {[r for _, r in f['long_functions']]}")
    print(f"modules directly in minunet/: {len(f['flat_modules'])} ({', '.join(f['flat_modules'])})")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / ROOT)
