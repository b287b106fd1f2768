"""A journey's flow drawn as a diagram on the server: inline SVG, no script, no CDN.

`flow_diagram_svg(flow=..., counts=..., links=...)` lays the nodes out in columns by their
distance from the entry node (breadth first, so a loop back does not move a node further
right), one box per node coloured by its kind, one arrow per edge with its handle (`true`,
`timeout`, a split's branch) written on it. Each box says how many live sessions are at the
node and how many failed there in the last 24 hours; each of the two numbers links to the
admin list of exactly those sessions (`links(node_id, "live" | "failed")`).

It draws every flow `flow_parse` accepts (a test generates them), and nothing else: an invalid
flow is the validator's business, and the journey page shows its messages instead.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from django.utils.html import escape

from journeys.flows.flow import Flow, flow_parse

NODE_WIDTH = 156
NODE_HEIGHT = 64
COLUMN_GAP = 56
ROW_GAP = 28
MARGIN = 16

# Fill colours by what a node does; the type is always written in the box too.
KIND_COLOURS: dict[str, str] = {
    "entry": "#e3f1e3",
    "exit": "#ececec",
    "wait": "#e4ecf7",
    "wait_for_event": "#e4ecf7",
    "condition": "#fbf0d9",
    "split": "#fbf0d9",
    "set_variable": "#f3e8f7",
}
SIDE_EFFECT_COLOUR = "#fde4e1"  # nodes that call the CRM or another server


@dataclass(frozen=True)
class NodeCounts:
    live: int = 0
    failed_24h: int = 0


@dataclass(frozen=True)
class Placed:
    node_id: str
    column: int
    row: int

    @property
    def x(self) -> int:
        return MARGIN + self.column * (NODE_WIDTH + COLUMN_GAP)

    @property
    def y(self) -> int:
        return MARGIN + self.row * (NODE_HEIGHT + ROW_GAP)


def flow_layout(flow: Flow) -> dict[str, Placed]:
    """Each node's column (its breadth-first distance from the entry) and row in that column,
    in the order the nodes were reached, so the drawing is the same for the same flow."""
    depth = {flow.entry_node_id: 0}
    order = [flow.entry_node_id]
    queue = deque([flow.entry_node_id])
    outgoing: dict[str, list[str]] = {}
    for (source, _handle), target in flow.edges.items():
        outgoing.setdefault(source, []).append(target)
    while queue:
        current = queue.popleft()
        for target in outgoing.get(current, []):
            if target not in depth:
                depth[target] = depth[current] + 1
                order.append(target)
                queue.append(target)
    rows: dict[int, int] = {}
    placed = {}
    for node_id in order:
        column = depth[node_id]
        placed[node_id] = Placed(node_id=node_id, column=column, row=rows.get(column, 0))
        rows[column] = rows.get(column, 0) + 1
    return placed


def _text(x: float, y: float, text: str, *, size: int = 12, weight: str = "normal") -> str:
    return (
        f'<text x="{x:.0f}" y="{y:.0f}" font-size="{size}" font-weight="{weight}" '
        f'fill="#222">{escape(text)}</text>'
    )


def _clip(text: str, length: int) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"


def flow_diagram_svg(
    *,
    flow: object,
    counts: Mapping[str, NodeCounts],
    links: Callable[[str, str], str],
    title: str = "Journey flow",
) -> str:
    """The flow as an SVG document fragment (module docstring). Raises FlowInvalid for a flow
    the validator refuses."""
    parsed = flow_parse(flow)
    placed = flow_layout(parsed)
    columns = max(p.column for p in placed.values()) + 1
    rows = max(p.row for p in placed.values()) + 1
    width = MARGIN * 2 + columns * NODE_WIDTH + (columns - 1) * COLUMN_GAP
    # Room under the last row for the loops drawn below the boxes.
    height = MARGIN * 2 + rows * NODE_HEIGHT + rows * ROW_GAP
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" class="journey-flow" '
        f'data-testid="flow-diagram" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" style="max-width:100%;height:auto" '
        f'font-family="system-ui, sans-serif">',
        f"<title>{escape(title)}</title>",
        f"<desc>{len(placed)} nodes and {len(parsed.edges)} edges; each node shows its live "
        "sessions and the sessions that failed there in the last 24 hours.</desc>",
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" '
        'fill="#555"/></marker></defs>',
    ]
    for (source, handle), target in sorted(
        parsed.edges.items(), key=lambda item: (item[0][0], item[0][1] or "")
    ):
        parts.append(_edge(placed[source], placed[target], handle))
    for node_id, place in placed.items():
        node = parsed.nodes[node_id]
        parts.append(_node(place, node.type, node.has_side_effect, counts.get(node_id), links))
    parts.append("</svg>")
    return "".join(parts)


def _edge(source: Placed, target: Placed, handle: str | None) -> str:
    x1, y1 = source.x + NODE_WIDTH, source.y + NODE_HEIGHT / 2
    x2, y2 = target.x, target.y + NODE_HEIGHT / 2
    if target.column > source.column:
        middle = (x1 + x2) / 2
        path = (
            f"M {x1:.0f} {y1:.0f} C {middle:.0f} {y1:.0f}, {middle:.0f} {y2:.0f}, {x2:.0f} {y2:.0f}"
        )
        label_x, label_y = middle, (y1 + y2) / 2 - 4
    elif target.column == source.column:
        # Within a column: straight down (or up) between the facing edges of the two boxes.
        x = source.x + NODE_WIDTH / 2
        down = target.row > source.row
        y1 = source.y + (NODE_HEIGHT if down else 0)
        y2 = target.y + (0 if down else NODE_HEIGHT)
        path = f"M {x:.0f} {y1:.0f} L {x:.0f} {y2:.0f}"
        label_x, label_y = x + 6, (y1 + y2) / 2
    else:
        # A loop back to an earlier column: under the boxes, from the bottom of the source to
        # the bottom of the target.
        sx, sy = source.x + NODE_WIDTH / 2, source.y + NODE_HEIGHT
        tx, ty = target.x + NODE_WIDTH / 2, target.y + NODE_HEIGHT
        low = max(sy, ty) + ROW_GAP * 0.8
        path = f"M {sx:.0f} {sy:.0f} C {sx:.0f} {low:.0f}, {tx:.0f} {low:.0f}, {tx:.0f} {ty:.0f}"
        label_x, label_y = (sx + tx) / 2, low - 2
    label = ""
    if handle is not None:
        label = (
            f'<text x="{label_x:.0f}" y="{label_y:.0f}" font-size="11" text-anchor="middle" '
            f'fill="#444" class="edge-handle">{escape(_clip(handle, 18))}</text>'
        )
    handle_attribute = escape(handle) if handle is not None else ""
    return (
        f'<g class="flow-edge" data-source="{escape(source.node_id)}" '
        f'data-target="{escape(target.node_id)}" data-handle="{handle_attribute}">'
        f'<path d="{path}" fill="none" stroke="#555" stroke-width="1.4" '
        f'marker-end="url(#arrow)"/>{label}</g>'
    )


def _node(
    place: Placed,
    node_type: str,
    has_side_effect: bool,
    counts: NodeCounts | None,
    links: Callable[[str, str], str],
) -> str:
    counts = counts or NodeCounts()
    fill = SIDE_EFFECT_COLOUR if has_side_effect else KIND_COLOURS.get(node_type, "#fff")
    x, y = place.x, place.y
    live_link = escape(links(place.node_id, "live"))
    failed_link = escape(links(place.node_id, "failed"))
    failed_colour = "#ba2121" if counts.failed_24h else "#555"
    return (
        f'<g class="flow-node" data-node="{escape(place.node_id)}" data-type="{escape(node_type)}" '
        f'data-live="{counts.live}" data-failed="{counts.failed_24h}">'
        f"<title>{escape(place.node_id)} ({escape(node_type)}): {counts.live} live, "
        f"{counts.failed_24h} failed in 24 h</title>"
        f'<rect x="{x}" y="{y}" width="{NODE_WIDTH}" height="{NODE_HEIGHT}" rx="6" '
        f'fill="{fill}" stroke="#666"/>'
        + _text(x + 8, y + 17, _clip(place.node_id, 22), weight="bold")
        + _text(x + 8, y + 33, _clip(node_type, 24), size=11)
        + f'<a href="{live_link}" class="node-live"><text x="{x + 8}" y="{y + 53}" '
        f'font-size="11" fill="#205493" text-decoration="underline">{counts.live} live</text></a>'
        f'<a href="{failed_link}" class="node-failed"><text x="{x + 72}" y="{y + 53}" '
        f'font-size="11" fill="{failed_colour}" text-decoration="underline">'
        f"{counts.failed_24h} failed 24 h</text></a></g>"
    )
