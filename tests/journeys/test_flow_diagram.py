"""The journey page's flow diagram: it draws every flow the validator accepts (generated), and
the numbers on its nodes are the sessions its links list."""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ET
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from journeys.flow_diagram import NodeCounts, flow_diagram_svg
from journeys.flows.flow import FlowInvalid, flow_parse
from journeys.models import JourneySession, SessionStatus
from tests.journeys.factories import ContactFactory, JourneyFactory

SVG = "{http://www.w3.org/2000/svg}"

# A valid config per node type, and the handles its outgoing edges may carry (None: one plain
# edge at most).
CONFIGS: dict[str, dict[str, Any]] = {
    "send_message": {"conversation_id": "c-1", "content": "Hello {{contact.name}}"},
    "wait": {"minutes": 5},
    "wait_for_event": {"event": "ordered", "timeout_seconds": 60},
    "condition": {"field": "variables.total", "operator": "greater_than", "value": 100},
    "split": {"branches": [{"handle": "a", "percentage": 30}, {"handle": "b", "percentage": 70}]},
    "set_variable": {"name": "x", "value": 1},
    "add_label": {"label": "vip"},
    "exit": {},
}
HANDLES: dict[str, tuple[str | None, ...]] = {
    "entry": (None,),
    "condition": ("true", "false"),
    "wait_for_event": ("event", "timeout"),
    "split": ("a", "b"),
    "exit": (),
}
# Node ids with the characters SVG and HTML must escape.
NODE_IDS = st.text(alphabet=st.sampled_from("abcxyz_-09 <>&\"'é"), min_size=1, max_size=30).filter(
    lambda text: text.strip() != ""
)


@st.composite
def valid_flows(draw: st.DrawFn) -> dict[str, Any]:
    """A flow the validator accepts: an entry node, every other node reached from an earlier
    one along a free handle (a tree), plus a few extra edges, loops back included."""
    ids = draw(st.lists(NODE_IDS, min_size=1, max_size=12, unique=True))
    types = ["entry", *(draw(st.sampled_from(sorted(CONFIGS))) for _ in ids[1:])]
    free = {index: list(HANDLES.get(kind, (None,))) for index, kind in enumerate(types)}
    edges = []
    for index in range(1, len(ids)):
        parents = [parent for parent in range(index) if free[parent]]
        if not parents:
            # Every earlier node is full (exits, used handles): this node cannot be reached.
            ids, types = ids[:index], types[:index]
            break
        parent = draw(st.sampled_from(parents))
        handle = free[parent].pop(draw(st.integers(0, len(free[parent]) - 1)))
        edges.append({"source": ids[parent], "target": ids[index], "handle": handle})
    for _ in range(draw(st.integers(0, 4))):
        sources = [index for index in range(len(ids)) if free[index]]
        if not sources:
            break
        source = draw(st.sampled_from(sources))
        target = draw(st.integers(1, len(ids) - 1)) if len(ids) > 1 else None
        if target is None:
            break
        handle = free[source].pop(0)
        edges.append({"source": ids[source], "target": ids[target], "handle": handle})
    nodes = [
        {"id": node_id, "type": kind, **({"config": CONFIGS[kind]} if kind in CONFIGS else {})}
        for node_id, kind in zip(ids, types, strict=True)
    ]
    return {
        "nodes": nodes,
        "edges": [
            {key: value for key, value in edge.items() if value is not None} for edge in edges
        ],
    }


def _links(node_id: str, which: str) -> str:
    return f"/sessions?node={uuid.uuid5(uuid.NAMESPACE_URL, node_id)}&which={which}"


@hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flow=valid_flows(), data=st.data())
def test_every_valid_flow_is_drawn_with_each_node_edge_and_count(flow, data):
    # The generator makes only flows the validator accepts: a refusal fails the test.
    parsed = flow_parse(flow)
    counts = {
        node_id: NodeCounts(
            live=data.draw(st.integers(0, 10_000)), failed_24h=data.draw(st.integers(0, 99))
        )
        for node_id in parsed.nodes
    }

    svg = flow_diagram_svg(flow=flow, counts=counts, links=_links, title="A <flow> & more")

    root = ET.fromstring(svg)  # well-formed XML: every id and handle was escaped
    assert root.tag == f"{SVG}svg"
    assert root.find(f"{SVG}title").text == "A <flow> & more"
    drawn = {
        node.get("data-node"): node
        for node in root.iter(f"{SVG}g")
        if node.get("class") == "flow-node"
    }
    assert set(drawn) == set(parsed.nodes)
    boxes = set()
    for node_id, node in drawn.items():
        assert node.get("data-type") == parsed.nodes[node_id].type
        assert int(node.get("data-live")) == counts[node_id].live
        assert int(node.get("data-failed")) == counts[node_id].failed_24h
        links = [link.get("href") for link in node.iter(f"{SVG}a")]
        assert links == [_links(node_id, "live"), _links(node_id, "failed")]
        rect = node.find(f"{SVG}rect")
        boxes.add((rect.get("x"), rect.get("y")))
    assert len(boxes) == len(drawn)  # no two boxes on top of each other
    edges = [g for g in root.iter(f"{SVG}g") if g.get("class") == "flow-edge"]
    assert sorted(
        (e.get("data-source"), e.get("data-target"), e.get("data-handle")) for e in edges
    ) == sorted((source, target, handle or "") for (source, handle), target in parsed.edges.items())
    width, height = (float(value) for value in root.get("viewBox").split()[2:])
    for rect in root.iter(f"{SVG}rect"):
        assert float(rect.get("x")) + float(rect.get("width")) <= width
        assert float(rect.get("y")) + float(rect.get("height")) <= height


def test_an_invalid_flow_is_refused_not_drawn():
    with pytest.raises(FlowInvalid):
        flow_diagram_svg(flow={"nodes": []}, counts={}, links=_links)


# -- on the journey page -------------------------------------------------------------------------


def _session(journey, *, node: str, status: str, finished_ago: timedelta | None = None):
    finished_at = timezone.now() - finished_ago if finished_ago is not None else None
    return JourneySession.objects.create(
        journey=journey,
        contact=ContactFactory(),
        status=status,
        current_node_id=node,
        finished_at=finished_at,
    )


@pytest.mark.django_db
def test_the_journey_page_counts_the_sessions_its_links_list(admin_client):
    journey = JourneyFactory(
        flow={
            "nodes": [
                {"id": "start", "type": "entry"},
                {"id": "hello", "type": "send_message", "config": CONFIGS["send_message"]},
                {"id": "pause", "type": "wait", "config": {"minutes": 5}},
                {"id": "end", "type": "exit"},
            ],
            "edges": [
                {"source": "start", "target": "hello"},
                {"source": "hello", "target": "pause"},
                {"source": "pause", "target": "end"},
            ],
        }
    )
    other = JourneyFactory()
    live = {
        _session(journey, node="pause", status=SessionStatus.WAITING).pk,
        _session(journey, node="pause", status=SessionStatus.PAUSED).pk,
    }
    failed_recently = {
        _session(
            journey, node="hello", status=SessionStatus.FAILED, finished_ago=timedelta(hours=2)
        ).pk
    }
    # Not counted: a failure older than 24 hours, a finished session, another journey's.
    _session(journey, node="hello", status=SessionStatus.FAILED, finished_ago=timedelta(days=2))
    _session(journey, node="end", status=SessionStatus.COMPLETED, finished_ago=timedelta(0))
    _session(other, node="pause", status=SessionStatus.WAITING)

    page = admin_client.get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()

    svg = ET.fromstring(re.search(r"<svg[^>]*flow-diagram.*?</svg>", page, re.DOTALL).group(0))
    nodes = {g.get("data-node"): g for g in svg.iter(f"{SVG}g") if g.get("class") == "flow-node"}
    counts = {
        node: (int(g.get("data-live")), int(g.get("data-failed"))) for node, g in nodes.items()
    }
    assert counts == {"start": (0, 0), "hello": (0, 1), "pause": (2, 0), "end": (0, 0)}

    def listed(link: str) -> set[int]:
        response = admin_client.get(link)  # ElementTree has unescaped the attribute
        assert response.status_code == 200, link
        html = response.content.decode()
        assert "errornote" not in html, link
        return {int(pk) for pk in re.findall(r'name="_selected_action" value="(\d+)"', html)}

    pause_live, hello_failed = (
        [a.get("href") for a in nodes[node].iter(f"{SVG}a")] for node in ("pause", "hello")
    )
    assert listed(pause_live[0]) == live
    assert listed(hello_failed[1]) == failed_recently
    assert listed(pause_live[1]) == set()
    # The page no longer shows a JSON dict for the sessions: a badge and a count per status.
    assert '{"active":' not in page
