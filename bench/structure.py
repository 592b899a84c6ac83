"""`python -m bench.structure`: the structure figures of issue "One package, one runtime".

- hops: Tidings' own frames on the stack when a handler's method runs, counted from the
  unit of work's commit (eager mode, so the whole path commit -> relay -> task -> handler is
  one stack), and the files they are in;
- the size of `Domain` and of the largest library module;
- import circles between library modules (strongly connected components of `tidings.*`
  imports, TYPE_CHECKING-only imports included);
- `isinstance` on a storage provider class outside the provider loader.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("domain", "outbox", "tasks", "app")
PROVIDER_CLASSES = re.compile(r"isinstance\([^)]*(Sql|Memory|MessageDb)\w*(Database|Store)\b")


def library_files() -> list[Path]:
    return sorted(p for package in LIBRARY for p in (ROOT / package).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(("tidings", *parts[:-1], *([] if parts[-1] == "__init__" else [parts[-1]])))


def hops() -> tuple[list[str], set[str]]:
    """The library calls open from `UnitOfWork.commit` to the handler method (exclusive).

    A profile hook keeps its own stack of calls (generator frames do not link back to their
    resumer), so the path through `with` blocks and eager Celery is seen whole.
    """
    from tidings import Domain, handle
    from tidings.app.testing import eager_app
    from tidings.fields import Identifier, String

    domain = Domain("hops", root_path=ROOT / "bench")
    domain.config.update(event_processing="async", command_processing="async")
    library = tuple(str(ROOT / package) for package in LIBRARY)
    calls: list[FrameType] = []
    path: list[str] = []

    @domain.aggregate
    class Note:
        text: String(required=True)

    @domain.event(part_of=Note)
    class Noted:
        note_id: Identifier(required=True)

    @domain.event_handler(part_of=Note)
    class OnNoted:
        @handle(Noted)
        def on_noted(self, event: Any) -> None:
            ours = [f for f in calls if f.f_code.co_filename.startswith(library)]
            start = max(i for i, f in enumerate(ours) if f.f_code.co_name == "commit")
            path.extend(
                f"{Path(f.f_code.co_filename).relative_to(ROOT)}:{f.f_code.co_name}" for f in ours[start:]
            )

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            calls.append(frame)
        elif event == "return" and calls:
            while calls and calls[-1] is not frame:
                calls.pop()  # frames left by an exception
            if calls:
                calls.pop()

    domain.init()
    eager_app(domain)
    with domain.domain_context():
        note = Note(text="x")
        note.raise_(Noted(note_id=note.id))
        sys.setprofile(profile)
        try:
            domain.repository_for(Note).add(note)
        finally:
            sys.setprofile(None)
    return path, {n.split(":")[0] for n in path}


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in library_files()}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            graph[name] |= {t for t in targets if t in modules and t != name and not name.startswith(t + ".")}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return found


def main() -> None:
    names, files = hops()
    sizes = sorted(((len(p.read_text().splitlines()), p) for p in library_files()), reverse=True)
    domain_class = ast.parse((ROOT / "domain" / "domain.py").read_text())
    cls = next(n for n in domain_class.body if isinstance(n, ast.ClassDef) and n.name == "Domain")
    provider_checks = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in library_files()
        if p.name != "providers.py"
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if PROVIDER_CLASSES.search(line)
    ]
    found = circles(import_graph())
    print(f"hops from a commit to the handler's method: {len(names)} in {len(files)} files")
    for name in names:
        print(f"  {name}")
    print(f"Domain class: {cls.end_lineno - cls.lineno + 1} lines")
    print(f"largest library module: {sizes[0][1].relative_to(ROOT)} {sizes[0][0]} lines")
    print(f"import circles: {len(found)} {found if found else ''}")
    print(f"isinstance on a provider outside the loader: {len(provider_checks)} {provider_checks or ''}")


if __name__ == "__main__":
    main()
