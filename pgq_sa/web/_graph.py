"""A workflow's steps laid out as a graph: layers by depth (longest path from a root), each
layer ordered by its parents' positions, edges as curves; drawn as SVG by a template."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from pgq_sa._dashboard import Step

NODE_WIDTH = 168
NODE_HEIGHT = 44
GAP_X = 56
GAP_Y = 16
MARGIN = 12
MAX_DRAWN = 400  # steps; a larger workflow is listed, not drawn


@dataclass(frozen=True)
class Node:
    step: Step
    x: float
    y: float
    label: str


@dataclass(frozen=True)
class Edge:
    path: str
    state: str  # the upstream step's state: its colour


@dataclass(frozen=True)
class Graph:
    width: float
    height: float
    nodes: list[Node]
    edges: list[Edge]
    node_width: int = NODE_WIDTH
    node_height: int = NODE_HEIGHT


def _depths(ids: list[int], parents: dict[int, list[int]]) -> dict[int, int]:
    """Longest path from a root, iteratively (a cycle, which the queue never stores, is cut)."""
    depth: dict[int, int] = {}
    for start in ids:
        stack = [(start, False)]
        visiting: set[int] = set()
        while stack:
            node, done = stack.pop()
            if done:
                visiting.discard(node)
                depth[node] = 1 + max(
                    (depth.get(p, 0) for p in parents.get(node, ()) if p in depth), default=-1
                )
                continue
            if node in depth or node in visiting:
                continue
            visiting.add(node)
            stack.append((node, True))
            stack.extend((p, False) for p in parents.get(node, ()) if p not in depth)
    return depth


def _label(task: str, limit: int = 22) -> str:
    return task if len(task) <= limit else task[: limit - 1] + "…"


def layout(steps: Sequence[Step], edges: Sequence[tuple[int, int]]) -> Graph | None:
    """Positions for every step and edge; None when there are too many steps to draw."""
    if not steps or len(steps) > MAX_DRAWN:
        return None
    by_id = {s.id: s for s in steps}
    parents: dict[int, list[int]] = defaultdict(list)
    for upstream, downstream in edges:
        if upstream in by_id and downstream in by_id:
            parents[downstream].append(upstream)
    depth = _depths(list(by_id), parents)
    layers: dict[int, list[int]] = defaultdict(list)
    for step_id in sorted(by_id):
        layers[depth[step_id]].append(step_id)
    row: dict[int, float] = {}
    for level in sorted(layers):
        members = layers[level]
        if level > 0:  # barycentre of the parents' rows keeps edges short and uncrossed
            members.sort(
                key=lambda s: (
                    sum(row[p] for p in parents[s]) / len(parents[s]) if parents[s] else 0.0,
                    s,
                )
            )
        for index, step_id in enumerate(members):
            row[step_id] = index
    tallest = max(len(m) for m in layers.values())
    height = MARGIN * 2 + tallest * NODE_HEIGHT + (tallest - 1) * GAP_Y
    width = MARGIN * 2 + len(layers) * NODE_WIDTH + (len(layers) - 1) * GAP_X
    position: dict[int, tuple[float, float]] = {}
    for level, members in layers.items():
        used = len(members) * NODE_HEIGHT + (len(members) - 1) * GAP_Y
        top = MARGIN + (height - 2 * MARGIN - used) / 2
        for index, step_id in enumerate(members):
            x = MARGIN + level * (NODE_WIDTH + GAP_X)
            position[step_id] = (x, top + index * (NODE_HEIGHT + GAP_Y))
    nodes = [
        Node(by_id[i], position[i][0], position[i][1], _label(by_id[i].task)) for i in sorted(by_id)
    ]
    drawn: list[Edge] = []
    for child, ups in parents.items():
        for upstream in ups:
            x1, y1 = position[upstream]
            x2, y2 = position[child]
            start = (x1 + NODE_WIDTH, y1 + NODE_HEIGHT / 2)
            end = (x2, y2 + NODE_HEIGHT / 2)
            bend = (end[0] - start[0]) / 2
            path = (
                f"M{start[0]:.1f},{start[1]:.1f} C{start[0] + bend:.1f},{start[1]:.1f} "
                f"{end[0] - bend:.1f},{end[1]:.1f} {end[0]:.1f},{end[1]:.1f}"
            )
            drawn.append(Edge(path, by_id[upstream].status.value))
    return Graph(width, height, nodes, drawn)
