import pytest

from core.task_map import TaskMap
from router.routing import MapRouter, get_router


def test_map_router_follows_map_and_fallback():
    m = TaskMap(version="v", routes={"network": "net-expert"}, fallback="generalist")
    r = get_router("map")
    assert isinstance(r, MapRouter)
    assert r.route("network", m) == "net-expert"
    assert r.route("unknown", m) == "generalist"


def test_unknown_router_name():
    with pytest.raises(ValueError, match="unknown router"):
        get_router("nope")
