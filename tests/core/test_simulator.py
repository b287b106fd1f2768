"""The shared simulator plumbing, over real HTTP: routing, counters, faults, control API."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests

from devtools.simulator import Faults, Route, SimRequest, SimResponse, Simulator, SimulatorError


class EchoSimulator(Simulator):
    def __init__(self, faults: Faults | None = None) -> None:
        super().__init__(faults=faults)
        self.add_route("GET", r"/items/(?P<item_id>\d+)", "items.get", self.item)
        self.add_route("POST", r"/items", "items.create", self.create)

    def item(self, request: SimRequest) -> SimResponse:
        return SimResponse(200, {"id": request.params["item_id"], "query": request.query})

    def create(self, request: SimRequest) -> SimResponse:
        body = request.json()
        if not isinstance(body, dict):
            raise SimulatorError(422, {"error": "expected an object"})
        return SimResponse(201, body, headers={"X-Created": "yes"})


@pytest.fixture
def simulator() -> EchoSimulator:
    return EchoSimulator()


@pytest.fixture
def base_url(simulator: EchoSimulator) -> Iterator[str]:
    with simulator.running() as url:
        yield url


def test_routes_answer_with_json_params_query_and_headers(base_url: str) -> None:
    response = requests.get(f"{base_url}/items/42?fields=a,b", timeout=5)

    assert response.status_code == 200
    assert response.json() == {"id": "42", "query": {"fields": "a,b"}}

    created = requests.post(f"{base_url}/items", json={"name": "x"}, timeout=5)
    assert created.status_code == 201
    assert created.json() == {"name": "x"}
    assert created.headers["X-Created"] == "yes"


def test_unknown_path_is_404_and_wrong_method_is_405(base_url: str) -> None:
    assert requests.get(f"{base_url}/nothing", timeout=5).status_code == 404
    assert requests.delete(f"{base_url}/items/1", timeout=5).status_code == 405


def test_handler_errors_and_bad_json_are_client_errors(base_url: str) -> None:
    not_json = requests.post(f"{base_url}/items", data=b"{nope", timeout=5)
    not_object = requests.post(f"{base_url}/items", json=[1], timeout=5)

    assert not_json.status_code == 400
    assert not_object.status_code == 422
    assert not_object.json() == {"error": "expected an object"}


def test_counters_count_calls_per_endpoint_and_idempotency_key(
    base_url: str, simulator: EchoSimulator
) -> None:
    for key in ("a", "a", "b"):
        requests.get(f"{base_url}/items/1", headers={"Idempotency-Key": key}, timeout=5)
    requests.get(f"{base_url}/_control/counters", timeout=5)  # control calls are not counted

    counters = requests.get(f"{base_url}/_control/counters", timeout=5).json()

    assert counters["calls"] == {"items.get": 3}
    assert counters["idempotency_keys"] == {"items.get": {"a": 2, "b": 1}}
    assert len(counters["timestamps"]["items.get"]) == 3
    assert simulator.counters.calls("items.get") == 3

    assert requests.post(f"{base_url}/_control/reset", timeout=5).status_code == 200
    assert requests.get(f"{base_url}/_control/counters", timeout=5).json()["calls"] == {}


def test_faults_change_at_run_time(base_url: str) -> None:
    changed = requests.post(f"{base_url}/_control/faults", json={"fault_rate": 1}, timeout=5)
    assert changed.json() == {"fault_rate": 1.0, "slow_ms": 0, "malformed_rate": 0.0}

    assert requests.get(f"{base_url}/items/1", timeout=5).status_code == 500
    # The control API itself never fails, or a test could not switch faults off again.
    requests.post(f"{base_url}/_control/faults", json={"fault_rate": 0}, timeout=5)
    assert requests.get(f"{base_url}/items/1", timeout=5).status_code == 200


def test_malformed_answers_are_not_json(base_url: str) -> None:
    requests.post(f"{base_url}/_control/faults", json={"malformed_rate": 1}, timeout=5)

    response = requests.get(f"{base_url}/items/1", timeout=5)

    assert response.status_code == 200
    with pytest.raises(requests.exceptions.JSONDecodeError):
        response.json()


def test_slow_answers_take_at_least_the_delay(base_url: str) -> None:
    requests.post(f"{base_url}/_control/faults", json={"slow_ms": 150}, timeout=5)

    started = time.monotonic()
    requests.get(f"{base_url}/items/1", timeout=5)

    assert time.monotonic() - started >= 0.15


@pytest.mark.parametrize(
    "values",
    [{"fault_rate": 2}, {"malformed_rate": "often"}, {"slow_ms": -1}, {"slow_ms": 1.5}],
)
def test_invalid_fault_settings_are_refused(base_url: str, values: dict[str, object]) -> None:
    response = requests.post(f"{base_url}/_control/faults", json=values, timeout=5)

    assert response.status_code == 400
    assert requests.get(f"{base_url}/_control/faults", timeout=5).json()["fault_rate"] == 0.0


def test_a_seeded_fault_rate_is_deterministic() -> None:
    first, second = Faults(fault_rate=0.3, seed=7), Faults(fault_rate=0.3, seed=7)

    assert [first.roll(0.3) for _ in range(50)] == [second.roll(0.3) for _ in range(50)]


def test_call_received_sees_every_service_call_before_faults_and_no_control_call() -> None:
    # Given a simulator that notes every call it receives, and fails every service call
    class NotingSimulator(EchoSimulator):
        def __init__(self) -> None:
            super().__init__(faults=Faults(fault_rate=1.0))
            self.received: list[tuple[str, dict[str, str]]] = []

        def call_received(self, route: Route, request: SimRequest) -> None:
            self.received.append((route.endpoint, dict(request.params)))

    simulator = NotingSimulator()
    with simulator.running() as url:
        failed = requests.get(f"{url}/items/7", timeout=5)
        requests.get(f"{url}/_control/counters", timeout=5)
        requests.get(f"{url}/nothing", timeout=5)

    # Then the failed call was noted with its route's parameters; control and 404s were not
    assert failed.status_code == 500
    assert simulator.received == [("items.get", {"item_id": "7"})]


def test_answers_are_compact_json() -> None:
    assert SimResponse(200, {"a": [1, {"b": "é"}]}).encode() == b'{"a":[1,{"b":"\\u00e9"}]}'
