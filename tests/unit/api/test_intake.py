"""What the intake refuses before any work: shapes and bodies (the element itself is checked by the worker)."""

import pytest

from api.errors import ApiError
from api.intake import MAX_DEPTH, MAX_STRING, check_shape, parse_batch


def nested(depth: int):
    value: object = "leaf"
    for _ in range(depth - 1):
        value = {"x": value}
    return value


def test_an_ordinary_customer_passes():
    check_shape({"profiles": [{"identifiers": [{"type": "mobile", "value": "91" * 5}], "source": "INSTORE"}]}, 0)


def test_nesting_deeper_than_the_limit_is_refused_naming_where():
    check_shape(nested(MAX_DEPTH), 3)
    with pytest.raises(ApiError) as refused:
        check_shape(nested(MAX_DEPTH + 1), 3)
    assert refused.value.status == 400 and refused.value.field.startswith("[3].x.x")


def test_a_long_string_or_key_is_refused_naming_where():
    with pytest.raises(ApiError) as long_value:
        check_shape({"profiles": [{"firstName": "a" * (MAX_STRING + 1)}]}, 7)
    assert long_value.value.field == "[7].profiles[0].firstName"
    with pytest.raises(ApiError) as long_key:
        check_shape({"k" * (MAX_STRING + 1): 1}, 0)
    assert long_key.value.code == "value_too_long"


@pytest.mark.parametrize(("body", "status", "words"), [
    (b"", 400, "empty"),
    (b"{", 400, "not valid JSON"),
    (b'{"profiles": []}', 400, "not an object"),
    (b"[]", 400, "empty"),
    (b"\xff", 400, "UTF-8"),
    (b"[1, 2, 3]", 413, "at most 2"),
])
def test_a_body_that_is_not_a_small_enough_json_array_is_refused(body, status, words):
    with pytest.raises(ApiError) as refused:
        parse_batch(body, max_items=2)
    assert refused.value.status == status and words in refused.value.message
