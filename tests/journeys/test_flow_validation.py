"""The flow is validated on every write, with messages that name the node."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from journeys.flows.flow import FlowInvalid, flow_parse
from journeys.models import Journey
from journeys.services import InvalidFlow, journey_create, journey_update
from tests.journeys.factories import JourneyFactory, bench_flow, linear_flow


def test_a_valid_flow_parses_with_its_entry_node():
    flow = flow_parse(bench_flow())

    assert flow.entry_node_id == "greet"
    assert flow.next_node_id("check", "true") == "ab"
    assert flow.next_node_id("ab", "b") == "mark"
    assert flow.next_node_id("end") is None


def test_an_unknown_node_type_is_refused_naming_the_node():
    flow = linear_flow(("a", "entry", {}), ("b", "send_sms", {}), ("c", "exit", {}))

    with pytest.raises(FlowInvalid) as error:
        flow_parse(flow)

    assert error.value.messages[0].startswith(
        "node \"b\": unknown node type 'send_sms' (known types:"
    )


def test_a_dangling_edge_is_refused():
    flow = linear_flow(("a", "entry", {}), ("b", "exit", {}))
    flow["edges"].append({"source": "a", "target": "ghost"})

    with pytest.raises(FlowInvalid) as error:
        flow_parse(flow)

    assert error.value.messages == ["edge #2 (a -> ghost): target node 'ghost' does not exist"]


@pytest.mark.parametrize(
    "node",
    [
        {"id": {}, "type": "exit", "config": {}},
        {"id": "b", "type": {}, "config": {}},
        {"id": "b", "type": ["exit"], "config": {}},
    ],
)
def test_a_node_whose_id_or_type_is_not_a_string_is_refused_not_a_crash(node):
    # Found by the API fuzzer: an object as a node's id or type crashed a lookup (a 500).
    flow = linear_flow(("a", "entry", {}))
    flow["nodes"].append(node)

    with pytest.raises(FlowInvalid):
        flow_parse(flow)


@pytest.mark.parametrize("target", [{}, ["a"], 7, None])
def test_an_edge_whose_ends_are_not_node_ids_is_refused_not_a_crash(target):
    # Found by the API fuzzer: an object as an edge's target crashed the lookup (a 500).
    flow = linear_flow(("a", "entry", {}), ("b", "exit", {}))
    flow["edges"].append({"source": "a", "target": target})

    with pytest.raises(FlowInvalid) as error:
        flow_parse(flow)

    assert error.value.messages == [
        f"edge #2 (a -> {target}): 'source' and 'target' must be node ids (strings)"
    ]


@pytest.mark.parametrize(
    ("flow", "message"),
    [
        (
            linear_flow(("a", "entry", {}), ("w", "wait", {}), ("z", "exit", {})),
            'node "w" (wait): config: Value error, the wait must last more than 0 seconds',
        ),
        (
            linear_flow(
                ("a", "entry", {}),
                (
                    "s",
                    "split",
                    {
                        "branches": [
                            {"handle": "x", "percentage": 60},
                            {"handle": "y", "percentage": 30},
                        ]
                    },
                ),
            ),
            'node "s" (split): config: Value error, branch percentages sum to 90, not 100',
        ),
        (
            linear_flow(
                ("a", "entry", {}), ("c", "condition", {"field": "variables.x", "operator": "is"})
            ),
            "node \"c\" (condition): config.operator: Input should be 'equals', 'not_equals', "
            "'contains', 'greater_than', 'less_than', 'exists' or 'not_exists'",
        ),
    ],
)
def test_each_node_config_is_validated_for_its_type(flow, message):
    with pytest.raises(FlowInvalid) as error:
        flow_parse(flow)

    assert error.value.messages == [message]


def test_exactly_one_entry_node_and_every_node_reachable():
    two_roots = {
        "nodes": [{"id": "a", "type": "exit"}, {"id": "b", "type": "exit"}],
        "edges": [],
    }
    unreachable = linear_flow(("a", "entry", {}), ("b", "exit", {}))
    unreachable["nodes"].append({"id": "lost", "type": "exit"})
    unreachable["nodes"].append(
        {"id": "lost2", "type": "set_variable", "config": {"name": "x", "value": 1}}
    )
    unreachable["edges"].append({"source": "lost2", "target": "lost"})

    with pytest.raises(FlowInvalid) as roots:
        flow_parse(two_roots)
    with pytest.raises(FlowInvalid) as lost:
        flow_parse(unreachable)

    assert roots.value.messages == [
        "the flow needs exactly one entry node (an 'entry' node, or one node without incoming "
        'edges); found: "a", "b"'
    ]
    assert lost.value.messages == [
        'node "lost" (exit) is not reachable from the entry node',
        'node "lost2" (set_variable) is not reachable from the entry node',
    ]


def test_edge_handles_must_exist_on_the_source_node():
    flow = bench_flow()
    flow["edges"].append({"source": "check", "target": "end", "handle": "maybe"})

    with pytest.raises(FlowInvalid) as error:
        flow_parse(flow)

    assert error.value.messages == [
        "edge #7 (check -> end): node \"check\" (condition) has no handle 'maybe' "
        "(expected one of: true, false)"
    ]


@pytest.mark.django_db
def test_services_and_model_clean_refuse_an_invalid_flow_and_write_nothing():
    flow = linear_flow(("a", "entry", {}), ("b", "teleport", {}))

    with pytest.raises(InvalidFlow) as error:
        journey_create(name="bad", flow=flow)
    with pytest.raises(ValidationError) as model_error:
        Journey(name="bad", flow=flow).full_clean()

    assert Journey.objects.count() == 0
    assert "unknown node type 'teleport'" in error.value.messages[0]
    assert "unknown node type 'teleport'" in model_error.value.message_dict["flow"][0]


@pytest.mark.django_db
def test_an_update_with_a_bad_flow_changes_nothing_and_a_good_one_bumps_the_version():
    journey = JourneyFactory()
    bad = bench_flow()
    bad["edges"][0]["target"] = "nowhere"

    with pytest.raises(InvalidFlow):
        journey_update(journey_id=journey.pk, flow=bad)
    updated = journey_update(journey_id=journey.pk, flow=linear_flow(("a", "exit", {})))

    assert updated.version == 2
    journey.refresh_from_db()
    assert journey.flow == linear_flow(("a", "exit", {}))
