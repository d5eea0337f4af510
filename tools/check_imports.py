#!/usr/bin/env python3
"""Checks the crates' import structure: no import circles between the files of `src/` or of
`owner/src/`, and the layering rules below. Prints every circle and broken rule; exits 1 if any.

A file "imports" another when it names an item of that file's module through `crate::`,
`super::` or a `use` group (`use crate::{a::b, c}`); a reference to a folder module
(`crate::model::Llama`) counts against the folder's `mod.rs`, which re-exports.
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Module prefixes a module may not import, by the module's own prefix: the layers below must
# not reach up (names → weights → model → emulator → adapter → …).
FORBIDDEN = {
    "names": ["*"],
    "weights": ["model", "emulator", "adapter", "tokenizer", "chat", "data", "eval", "train",
                "session", "web", "generate"],
    "model": ["emulator", "adapter", "data", "eval", "train", "session", "web"],
    "emulator": ["adapter", "session", "web"],
}


def module_of(path: Path, src: Path) -> tuple:
    rel = path.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    return re.sub(r"//[^\n]*", "", text)


def expand_use(tree: str) -> list:
    """`a::{b::c, d}` → ['a::b::c', 'a::d'] (one level of parsing per brace group)."""
    tree = tree.strip()
    if "{" not in tree:
        return [tree]
    head, _, rest = tree.partition("{")
    body = rest[: rest.rfind("}")]
    parts, depth, cur = [], 0, ""
    for ch in body:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    parts.append(cur)
    out = []
    for p in parts:
        if p.strip():
            out += [head + x for x in expand_use(p)]
    return out


def references(text: str, me: tuple) -> list:
    """Absolute module paths (tuples) named in `text`, from the file of module `me`."""
    text = strip_comments(text)
    paths = []
    for m in re.finditer(r"\buse\s+((?:crate|super|self)::[^;]*);", text, flags=re.S):
        paths += expand_use(re.sub(r"\s+", "", m.group(1)))
    paths += re.findall(r"\b((?:crate|super)(?:::[A-Za-z_][A-Za-z0-9_]*)+)", text)
    out = []
    for p in paths:
        segs = p.split("::")
        if segs[0] == "crate":
            base, segs = [], segs[1:]
        elif segs[0] == "super":
            base = list(me[:-1])
            segs = segs[1:]
            while segs and segs[0] == "super":
                base, segs = base[:-1], segs[1:]
        elif segs[0] == "self":
            base, segs = list(me), segs[1:]
        else:
            continue
        out.append(tuple(base + segs))
    return out


def check(src: Path, label: str) -> list:
    files = {module_of(p, src): p for p in src.rglob("*.rs")}
    graph = {m: set() for m in files}
    # Items a folder module re-exports (`pub use llama::{Llama, ...}`): a reference through
    # the folder (`crate::model::Llama`) counts against the file that defines the item.
    reexports = {}
    for m, p in files.items():
        text = strip_comments(p.read_text())
        for u in re.finditer(r"\bpub\s+use\s+([^;]*);", text, flags=re.S):
            for path in expand_use(re.sub(r"\s+", "", u.group(1))):
                segs = path.split("::")
                if segs[0] == "self":
                    segs = segs[1:]
                if segs[0] in ("crate", "super"):
                    continue
                item = segs[-1].split(" as ")[-1]
                reexports[(m, item)] = m + tuple(segs[:-1])

    def resolve(ref):
        for n in range(len(ref), 0, -1):
            if ref[:n] in files:
                target = ref[:n]
                if n < len(ref) and (target, ref[n]) in reexports:
                    via = reexports[(target, ref[n])]
                    if via in files:
                        return via
                return target
        return None

    for m, p in files.items():
        for ref in references(p.read_text(), m):
            target = resolve(ref)
            if target is not None and target != m and target[: len(m)] != m:
                graph[m].add(target)
    problems = []
    # Layering rules (src only).
    if label == "src":
        for m, deps in graph.items():
            if not m:
                continue
            banned = FORBIDDEN.get(m[0], [])
            for d in deps:
                if d and d[0] != m[0] and ("*" in banned or d[0] in banned):
                    problems.append(f"{label}: {'/'.join(m)} imports {'::'.join(d)} (above it)")
    # Circles: strongly connected components of the file graph (Tarjan). A folder's mod.rs
    # naming its own files (`pub mod`, re-exports) is not a circle.
    def edges(m):
        return [d for d in graph[m] if not (d[: len(m)] == m)]
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges(v):
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
                sccs.append(comp)

    for v in graph:
        if v not in index:
            visit(v)
    for comp in sccs:
        names = sorted("/".join(c) or "lib" for c in comp)
        problems.append(f"{label}: import circle among {', '.join(names)}")
    return problems


def main():
    problems = check(ROOT / "src", "src") + check(ROOT / "owner" / "src", "owner")
    for p in problems:
        print(p)
    if problems:
        sys.exit(1)
    print("imports: no circles, layering respected (src/, owner/src/)")


if __name__ == "__main__":
    main()
