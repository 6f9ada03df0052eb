"""Reads the dependency graph that `cargo modules dependencies` writes (DOT, on standard
input), folds it onto the crate's top-level modules, prints each module's dependencies,
and fails on a cycle between them. (cargo-modules' own `--acyclic` flags cycles
between an item and its own methods too, which says nothing about the layers.)"""

import re
import sys

CRATE = "users_service"

edges = set()
for line in sys.stdin:
    found = re.match(r'\s*"([^"]+)" -> "([^"]+)" \[label="uses"', line)
    if not found:
        continue
    source, target = (path.split("::") for path in found.groups())
    if len(source) < 2 or len(target) < 2 or source[0] != CRATE or target[0] != CRATE:
        continue
    if source[1] != target[1]:
        edges.add((source[1], target[1]))

modules = sorted({module for edge in edges for module in edge})
uses = {module: sorted(t for s, t in edges if s == module) for module in modules}
for module in modules:
    print(f"{module} -> {' '.join(uses[module])}")

VISITING, DONE = 1, 2
state = {}


def visit(module, path):
    if state.get(module) == VISITING:
        print("layers: a cycle: " + " -> ".join(path + [module]), file=sys.stderr)
        sys.exit(1)
    if state.get(module) == DONE:
        return
    state[module] = VISITING
    for used in uses.get(module, []):
        visit(used, path + [module])
    state[module] = DONE


for module in modules:
    visit(module, [])
if not edges:
    print("layers: no dependencies read (is this cargo-modules' DOT output?)", file=sys.stderr)
    sys.exit(1)
print("no cycles between the top-level modules")
