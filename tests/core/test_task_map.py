import pytest

from core.task_map import MapError, MapStore, TaskMap

TASKS = ["network", "database"]
EXPERTS = ["a", "b"]


def _map(version="m1", **routes):
    return TaskMap(version=version, routes=routes or {"network": "a", "database": "b"}, fallback="a")


def test_route_and_unknown_fallback():
    m = _map()
    assert m.route("database") == "b"
    assert m.route("unknown") == "a"


def test_check_refuses_bad_maps():
    _map().check(TASKS, EXPERTS)
    with pytest.raises(MapError, match="tasks without an expert"):
        _map(network="a").check(TASKS, EXPERTS)
    with pytest.raises(MapError, match="not deployed"):
        _map(network="a", database="zzz").check(TASKS, EXPERTS)
    with pytest.raises(MapError, match="not in the task set"):
        _map(network="a", database="b", storage="a").check(TASKS, EXPERTS)


def test_store_publish_history_rollback(tmp_path):
    store = MapStore(tmp_path)
    assert store.current() is None
    store.publish(_map("m1"))
    store.publish(_map("m2", network="b", database="b"))
    assert store.current().version == "m2"
    assert [h["version"] for h in store.history()] == ["m1", "m2"]
    assert store.rollback().version == "m1"
    assert store.current().version == "m1"
    with pytest.raises(MapError, match="no earlier map"):
        store.rollback()
    with pytest.raises(MapError, match="already published"):
        store.publish(_map("m2"))


def test_load_reports_bad_files(tmp_path):
    with pytest.raises(MapError, match="not found"):
        TaskMap.load(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("version: x\nroutes: 5\nfallback: a\n")
    with pytest.raises(MapError, match="not a valid map"):
        TaskMap.load(tmp_path / "bad.yaml")
