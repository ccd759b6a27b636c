"""The byte budget of the values a proxy owns (cogs/proxy/owned.py)."""

from __future__ import annotations

from cogs.proxy.owned import Entry, OwnedValues


def _e(n: int | None) -> Entry:
    return Entry(None if n is None else b"x" * n, 0, 0.0)


def test_least_recently_used_values_go_first_and_bytes_add_up() -> None:
    o = OwnedValues(250)
    for i in range(3):
        o[(1, f"k{i}")] = _e(100)
    assert o.bytes == 300
    o.touch((1, "k0"))  # used: k1 is now the oldest
    gone = o.over_budget()
    assert [k for k, _ in gone] == [(1, "k1")]
    assert (o.bytes, len(o)) == (200, 2)
    assert o.over_budget() == []  # within the budget: nothing more goes


def test_values_being_loaded_hold_no_bytes_and_stay() -> None:
    o = OwnedValues(50)
    loading = _e(None)
    o[(1, "loading")] = loading
    o[(1, "big")] = _e(80)
    assert [k for k, _ in o.over_budget()] == [(1, "big")]
    assert o.get((1, "loading")) is loading
    o.set_value((1, "loading"), loading, b"y" * 40)  # loaded: counted, and the most recent
    assert (o.bytes, loading.value) == (40, b"y" * 40)


def test_replacing_and_removing_keep_the_count_exact() -> None:
    o = OwnedValues(1000)
    e = _e(10)
    o[(1, "a")] = e
    o.set_value((1, "a"), e, b"z" * 30)
    o[(2, "a")] = _e(5)
    o[(2, "a")] = _e(7)  # replaced
    assert o.bytes == 37
    assert o.pop((1, "a")) is e
    del o[(2, "a")]
    assert (o.bytes, len(o), o.pop((3, "none"))) == (0, 0, None)
    stray = _e(3)
    o.set_value((1, "gone"), stray, b"abc")  # no longer held: its value changes, the count does not
    assert (o.bytes, stray.value) == (0, b"abc")


def test_a_value_over_the_whole_budget_goes_alone() -> None:
    o = OwnedValues(250)
    o[(1, "a")] = _e(100)
    o[(1, "b")] = _e(100)
    o[(1, "huge")] = _e(300)
    assert [k for k, _ in o.over_budget()] == [(1, "huge")]
    assert (o.bytes, len(o)) == (200, 2)
