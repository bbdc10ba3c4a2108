#!/usr/bin/env python3
"""Fails when a module imports one that imports it back, directly or through others.

Usage: scripts/check-modules.py CRATE_SRC_DIR [...]   (each a crate's `src`, holding lib.rs)

Each module is a node of its crate's module tree. A module and the modules nested in it form one
unit: a child may use its parent's items (Rust's privacy is built for that) and a parent its
children's. Between siblings — the modules declared side by side in one parent, each taken with
everything nested in it — the uses must form no cycle. A use is any path that names another
module: `use crate::a::b`, `crate::a::f()` in code, `super::x`, `self::x`, or a path starting
with a sibling's name. Crates cannot import each other in a cycle (Cargo refuses), so checking
each crate's tree covers the whole workspace.
"""
import os
import re
import sys

MOD_DECL = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([a-z_][a-z0-9_]*)\s*;", re.M)
PATH = re.compile(r"\b((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)+)")
USE_GROUP = re.compile(r"\buse\s+((?:crate|super|self)(?:::[A-Za-z_]\w*)*)::\{([^;]*)\};", re.S)
COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)


def module_file(dir_, name):
    for candidate in (os.path.join(dir_, name + ".rs"), os.path.join(dir_, name, "mod.rs")):
        if os.path.exists(candidate):
            return candidate
    return None


def tree(src):
    """Module path (tuple) -> file, from lib.rs (or main.rs) down."""
    root = next(f for f in (os.path.join(src, "lib.rs"), os.path.join(src, "main.rs")) if os.path.exists(f))
    modules = {(): root}
    todo = [((), root)]
    while todo:
        path, file = todo.pop()
        text = COMMENT.sub("", open(file, encoding="utf-8").read())
        base = os.path.dirname(file)
        if path and not file.endswith(("mod.rs", "lib.rs", "main.rs")):
            base = os.path.join(base, os.path.basename(file)[:-3])
        # Inline `mod tests { .. }` blocks are not files; only `mod x;` declarations are.
        for name in MOD_DECL.findall(text):
            child = module_file(base, name)
            if child:
                modules[path + (name,)] = child
                todo.append((path + (name,), child))
    return modules


ITEM = re.compile(r"^\s*pub(?:\([^)]*\))?\s+(?:async\s+)?(?:fn|struct|enum|const|static|trait|type|union)\s+([A-Za-z_]\w*)", re.M)
REEXPORT = re.compile(r"^\s*pub(?:\([^)]*\))?\s+use\s+([^;]+);", re.M)


def defining_modules(modules, texts):
    """(module, item name) -> the module that defines it, following `pub use` re-exports, so that a
    path through a re-export counts as a use of the module behind it."""
    defines = {}
    for path, text in texts.items():
        for name in ITEM.findall(text):
            defines[(path, name)] = path
    for _ in range(4):  # re-exports of re-exports
        for path, text in texts.items():
            for target in REEXPORT.findall(text):
                target = " ".join(target.split())
                base, _, group = target.partition("::{")
                names = [n.strip().split(" as ")[-1] for n in group.rstrip("}").split(",")] if group else []
                if not group:
                    base, _, last = target.rpartition("::")
                    names = [last]
                parts = base.split("::")
                src = path if parts[0] == "self" else () if parts[0] == "crate" else path[:-1] if parts[0] == "super" else path
                for part in parts[1:] if parts[0] in ("self", "crate", "super") else parts:
                    src = src + (part,)
                if src not in modules:
                    continue
                for n in names:
                    if n == "*":
                        for (m, item), owner in list(defines.items()):
                            if m == src:
                                defines.setdefault((path, item), owner)
                    elif (src, n) in defines:
                        defines.setdefault((path, n), defines[(src, n)])
    return defines


def references(path, text, modules, defines=None):
    """Module paths that `text` (the source of module `path`) names."""
    names = []
    for prefix, group in USE_GROUP.findall(text):
        for item in re.split(r"[,\s]+", group):
            item = item.strip().split(" as ")[0].strip("{} ")
            if item:
                names.append(prefix + "::" + item)
    names += PATH.findall(text)
    out = set()
    for name in names:
        parts = name.split("::")
        if parts[0] == "crate":
            target, rest = (), parts[1:]
        elif parts[0] in ("super", "self"):
            target = path
            while parts and parts[0] in ("super", "self"):
                if parts[0] == "super":
                    target = target[:-1]
                parts = parts[1:]
            rest = parts
        else:
            continue
        # The longest prefix that is a module, then the item's own module if re-exported.
        for part in rest:
            if target + (part,) in modules:
                target = target + (part,)
            else:
                if defines and (target, part) in defines:
                    target = defines[(target, part)]
                break
        out.add(target)
    # A path that starts with a sibling's (or child's) bare name: `use settle::Next`.
    for m in re.finditer(r"\buse\s+([a-z_][a-z0-9_]*)::", text):
        for base in (path[:-1], path):
            if base + (m.group(1),) in modules:
                out.add(base + (m.group(1),))
    return out


def cycles(src):
    modules = tree(src)
    texts = {}
    for path, file in modules.items():
        text = COMMENT.sub("", open(file, encoding="utf-8").read())
        # Test modules may use anything.
        texts[path] = re.split(r"#\[cfg\(test\)\]", text)[0]
    defines = defining_modules(modules, texts)
    uses = {path: references(path, text, modules, defines) for path, text in texts.items()}
    found = []
    parents = {p[:-1] for p in modules if p}
    for parent in sorted(parents):
        children = [p for p in modules if len(p) == len(parent) + 1 and p[:-1] == parent]
        unit = lambda m: m[: len(parent) + 1] if m[: len(parent)] == parent and len(m) > len(parent) else None
        graph = {c: set() for c in children}
        for m, targets in uses.items():
            a = unit(m)
            if a is None:
                continue
            for t in targets:
                b = unit(t)
                if b is not None and b != a:
                    graph[a].add(b)
        # Strongly connected components (Tarjan).
        index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

        def visit(v):
            index[v] = low[v] = counter[0]
            counter[0] += 1
            stack.append(v)
            on.add(v)
            for w in graph[v]:
                if w not in index:
                    visit(w)
                    low[v] = min(low[v], low[w])
                elif w in on:
                    low[v] = min(low[v], index[w])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    comps.append(comp)

        for v in graph:
            if v not in index:
                visit(v)
        for comp in comps:
            names = sorted("::".join(("crate",) + c) for c in comp)
            found.append(" <-> ".join(names))
    return found


def main(dirs):
    bad = False
    for src in dirs:
        for cycle in cycles(src):
            bad = True
            print(f"{src}: import cycle: {cycle}", file=sys.stderr)
    if bad:
        sys.exit(1)
    print(f"no import cycles in {len(dirs)} crate(s)")


if __name__ == "__main__":
    import glob
    main(sys.argv[1:] or sorted(glob.glob("host/*/src")) + ["tests/src"])
