#!/usr/bin/env python3
"""Finds import circles among the agent's modules (one module per file).

Every `crate::…`, `super::…` and `self::…` path in a file is resolved to the longest module
path that is a file of `agent/src`; each such reference is an edge from the file's module to
that module. Circles are the strongly connected components of more than one module. With
`--no-tests`, a trailing `#[cfg(test)] mod tests { … }` block and `tests.rs` files are left
out, which shows the shape of the shipped code alone.

Usage: scripts/agent-import-cycles.py [--no-tests] [--edges] [src dir, default agent/src]
Exits 1 when there is a circle.
"""

import os
import re
import sys


def module_of(rel):
    parts = rel[:-3].split("/")
    if parts[-1] in ("mod", "main", "lib"):
        parts = parts[:-1]
    return tuple(["crate"] + parts)


def split_top(text):
    """Splits `a, b::{c, d}, e` at its top-level commas."""
    items, depth, cur = [], 0, ""
    for ch in text:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            items.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        items.append(cur.strip())
    return items


def expand(path):
    """Expands `a::{b, c::d}` into `a::b`, `a::c::d`."""
    m = re.match(r"^([\w:]*?)::\{(.*)\}$", path, re.S)
    if not m:
        return [path]
    out = []
    for item in split_top(m.group(2)):
        item = item.split(" as ")[0].strip()
        if item == "self":
            out.append(m.group(1))
        else:
            out.extend(expand(m.group(1) + "::" + item))
    return out


def inline_modules(text):
    """The `mod name { … }` blocks of a file: (start, end, name)."""
    blocks = []
    for m in re.finditer(r"\bmod\s+(\w+)\s*\{", text):
        depth, i = 0, m.end() - 1
        while i < len(text):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        blocks.append((m.start(), i, m.group(1)))
    return blocks


def references(text):
    """(position, path) of every path that starts at `crate`, `super` or `self`."""
    refs = []
    # `use` items, braces included.
    for m in re.finditer(r"\buse\s+((?:crate|super|self)(?:::[^;]*));", text):
        for path in expand(re.sub(r"\s+", " ", m.group(1)).replace(" ", "")):
            refs.append((m.start(), path))
    # Paths written inline.
    for m in re.finditer(r"\b((?:crate|super|self)(?:::(?:super|\w+))+)", text):
        refs.append((m.start(), m.group(1)))
    return refs


def resolve(ref, here, modules):
    parts = ref.split("::")
    if parts[0] == "crate":
        base, rest = ["crate"], parts[1:]
    else:
        base = list(here)
        rest = parts
        while rest and rest[0] in ("super", "self"):
            if rest[0] == "super":
                base = base[:-1]
            rest = rest[1:]
    path = base + [p for p in rest if p not in ("*",)]
    for n in range(len(path), 0, -1):
        if tuple(path[:n]) in modules:
            return tuple(path[:n])
    return None


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    no_tests = "--no-tests" in sys.argv
    src = args[0] if args else "agent/src"
    files = {}
    for root, _, names in os.walk(src):
        for name in names:
            if name.endswith(".rs"):
                rel = os.path.relpath(os.path.join(root, name), src)
                if no_tests and (name == "tests.rs" or name == "fuzz.rs"):
                    continue
                files[module_of(rel)] = open(os.path.join(root, name)).read()
    modules = set(files)
    edges = {m: set() for m in modules}
    for mod, text in files.items():
        if no_tests:
            cut = re.search(r"^#\[cfg\(test\)\]\s*\n(pub(\(crate\))? )?mod tests \{", text, re.M)
            if cut:
                text = text[: cut.start()]
        # Comments and strings name paths that are not imports.
        text = re.sub(r"//[^\n]*", "", text)
        blocks = inline_modules(text)
        # A child module declared here (`mod foo;`) is also reachable as plain `foo::…`.
        for child in re.findall(r"^\s*(?:pub(?:\([\w:]+\))?\s+)?mod\s+(\w+)\s*;", text, re.M):
            target = mod + (child,)
            if target in modules and re.search(r"(?<![\w:])" + child + r"::", text):
                edges[mod].add(target)
        for pos, ref in references(text):
            # `super` inside an inline `mod tests { … }` is the file's own module.
            here = mod + tuple(name for (a, b, name) in blocks if a < pos < b)
            target = resolve(ref, here, modules)
            if target and target != mod:
                edges[mod].add(target)

    if "--edges" in sys.argv:
        for mod in sorted(edges):
            print("::".join(mod), "->", ", ".join(sorted("::".join(t) for t in edges[mod])))

    # Tarjan's strongly connected components.
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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
            sccs.append(comp)

    for v in sorted(modules):
        if v not in index:
            visit(v)
    circles = [c for c in sccs if len(c) > 1]
    for c in circles:
        print("circle:", " <-> ".join(sorted("::".join(m) for m in c)))
    print(f"{len(modules)} modules, {sum(len(e) for e in edges.values())} edges, {len(circles)} circles")
    return 1 if circles else 0


if __name__ == "__main__":
    sys.exit(main())
