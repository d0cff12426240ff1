"""Keys, prefix matching and the retry schedule, implemented in Rust.

Weak spot 29 of PyStackQuery: its key hash was ``str(key)``, so a list filter never
matched tuple keys (prefix invalidation silently missed) and storage names were Python
reprs. Here a key is converted into the Rust library's key: the same text as a Rust
client's key, and a filter may be a list.
"""

from __future__ import annotations

import pytest

import stackquery
from stackquery import default_retry_delay, hash_key, key_parts, partial_match


def test_hash_key_is_the_rust_key_text() -> None:
    # Golden strings: the same text the Rust library prints for key!["users", "7"] and
    # for key!["page", 2, true] (see `key.rs`' display tests).
    assert hash_key(("users", "7")) == '["users","7"]'
    assert hash_key(("page", 2, True)) == '["page",2,true]'
    assert hash_key(()) == "[]"


def test_equal_keys_hash_equal_and_types_stay_apart() -> None:
    assert hash_key(("a", "1")) == hash_key(("a", "1"))
    # A string "1" and an int 1 are different parts (PyStackQuery told them apart only
    # through their reprs).
    assert hash_key(("a", "1")) != hash_key(("a", 1))
    # bool is not int here, although Python makes True == 1.
    assert hash_key(("a", True)) != hash_key(("a", 1))


def test_key_parts_round_trip() -> None:
    key = ("users", 7, False, "x" * 100, 2**63 + 5, -3)
    assert key_parts(key) == key
    assert [type(p) for p in key_parts(key)] == [str, int, bool, str, int, int]


@pytest.mark.parametrize(
    ("filter_key", "target", "expected"),
    [
        (("todos",), ("todos", "active"), True),
        (("todos",), ("users",), False),
        (("todos", "active"), ("todos",), False),
        (("todos", "active"), ("todos", "active"), True),
        ((), ("anything",), True),
        # Weak spot 29: a list filter matches tuple keys.
        (["todos"], ("todos", "active"), True),
        (["todos", 1], ("todos", 1, "x"), True),
        (("todos", "1"), ("todos", 1), False),
    ],
)
def test_partial_match(filter_key, target, expected) -> None:
    assert partial_match(filter_key, target) is expected


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (["users", "7"], "a query key must be a tuple"),
        ("users", "a query key must be a tuple"),
        (None, "got NoneType"),
        (("users", 1.5), "part 1 (float)"),
        (("users", None), "part 1 (NoneType)"),
        (("users", ("nested",)), "part 1 (tuple)"),
        (("users", {"a": 1}), "part 1 (dict)"),
        (("users", 2**64), "fit in 64 bits"),
    ],
)
def test_bad_keys_are_a_clear_type_error(bad, message) -> None:
    with pytest.raises(TypeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        hash_key(bad)


def test_bad_filters_are_a_clear_type_error() -> None:
    with pytest.raises(TypeError, match="a key filter must be a tuple or a list"):
        partial_match("users", ("users",))
    with pytest.raises(TypeError, match=r"a key filter: part 0 \(float\)"):
        partial_match([1.5], ("users",))


def test_default_retry_delay_is_the_rust_schedule() -> None:
    assert [default_retry_delay(a) for a in range(7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert default_retry_delay(10_000) == 30.0
    with pytest.raises(ValueError, match="0 or more"):
        default_retry_delay(-1)


def test_the_package_exports_what_it_builds() -> None:
    for name in stackquery.__all__:
        assert hasattr(stackquery, name), name
