"""A pipeline's graph of steps: the references between steps (``parents``,
``conflicts``, ``depends = "each"``), cycles, and the order the steps are kept
in (parents first).

The scheduler relies on what is checked here: every parent exists, no step
waits for itself through a cycle, and ``depends = "each"`` pairs job *i* of a
step with job *i* of each parent, so the job counts must match.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping

from ..model import Depends, Step
from ..tomlcheck import TomlFile, show

__all__ = ["check_cycles", "check_references", "cycles", "topological"]


def check_references(f: TomlFile, step: Step, steps: Mapping[str, Step]) -> None:
    """The steps ``step`` names exist, are not itself, and, with ``depends =
    "each"``, have as many jobs as it has."""
    table = f"steps.{step.name}"
    for key, names in (("parents", step.parents), ("conflicts", step.conflicts)):
        for other in names:
            if other == step.name:
                f.problem(table, key, f"a step cannot name itself ({show(other)})")
            elif other not in steps:
                f.problem(table, key, _unknown(other, steps))
    # an earlier cycle's own step is allowed: a loop through time ("a[-PT6H]")
    for earlier in step.intercycle:
        if earlier.step not in steps:
            f.problem(table, "parents", f"{show(str(earlier))}: " + _unknown(earlier.step, steps))
    if step.depends is Depends.EACH:
        for parent in (*step.parents, *(p.step for p in step.intercycle)):
            if parent in steps and parent != step.name and steps[parent].jobs != step.jobs:
                f.problem(
                    table,
                    "depends",
                    f'"each" needs equal job counts: this step has jobs = {step.jobs}, '
                    f"parent {show(parent)} has jobs = {steps[parent].jobs}",
                )


def _unknown(other: str, steps: Mapping[str, Step]) -> str:
    hint = difflib.get_close_matches(other, list(steps), n=1)
    more = f'; did you mean "{hint[0]}"?' if hint else ""
    return f"unknown step {show(other)}{more} (steps: {', '.join(steps)})"


def check_cycles(f: TomlFile, steps: Mapping[str, Step]) -> None:
    """Each cycle of parents is a problem of its first step in the file."""
    for cycle in cycles(steps):
        f.problem(f"steps.{cycle[0]}", "parents", f"cycle in the steps' parents: {' -> '.join(cycle)}")


def cycles(steps: Mapping[str, Step]) -> list[list[str]]:
    """Cycles of the parents graph, each as [a, b, ..., a] with a parent before its child."""
    children: dict[str, list[str]] = {name: [] for name in steps}
    for step in steps.values():
        for parent in step.parents:
            if parent in children and parent != step.name:
                children[parent].append(step.name)
    colour = dict.fromkeys(steps, 0)  # 0 new, 1 on the path, 2 done
    found: list[list[str]] = []
    seen: set[frozenset[str]] = set()

    for root in steps:  # file order, so messages are stable
        if colour[root]:
            continue
        path = [root]
        colour[root] = 1
        stack = [iter(children[root])]
        while stack:
            child = next(stack[-1], None)
            if child is None:
                colour[path.pop()] = 2
                stack.pop()
            elif colour[child] == 1:
                cycle = [*path[path.index(child) :], child]
                if frozenset(cycle) not in seen:
                    seen.add(frozenset(cycle))
                    found.append(cycle)
            elif colour[child] == 0:
                colour[child] = 1
                path.append(child)
                stack.append(iter(children[child]))
    return found


def topological(steps: Mapping[str, Step]) -> dict[str, Step]:
    """Parents first; among steps ready at the same time, the one first in the file."""
    placed: dict[str, Step] = {}
    remaining = list(steps.values())
    while remaining:
        for i, step in enumerate(remaining):
            if all(p in placed or p not in steps for p in step.parents):
                placed[step.name] = remaining.pop(i)
                break
        else:  # a cycle, already reported: keep the rest in file order
            placed.update((s.name, s) for s in remaining)
            break
    return placed
