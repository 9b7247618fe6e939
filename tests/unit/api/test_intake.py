"""What the intake refuses before any work: shapes and bodies (the element itself is checked by the worker)."""

import io

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


def csv_rows(text: str | bytes, max_items: int = 100) -> list:
    from api.intake import csv_elements

    raw = text.encode() if isinstance(text, str) else text
    return list(csv_elements(io.BufferedReader(io.BytesIO(raw)), max_items))


def test_a_csv_row_becomes_the_customer_its_columns_name():
    body = ("\ufefffirstName,lastName,source,accountId,identifiers.mobile,identifiers.externalId,commChannels.email,"
            "extendedFields.gender,customFields.city\r\n"
            '"Smith, Jr.","O""Brien",WEB_ENGAGE,acc1,919800000001,E-1,a@example.com,Male,"Pune\r\nEast"\r\n'
            "Ann,,INSTORE,,919800000002,,,,\r\n")

    first, second = csv_rows(body)

    assert first == {"profiles": [{
        "firstName": "Smith, Jr.", "lastName": 'O"Brien', "source": "WEB_ENGAGE", "accountId": "acc1",
        "identifiers": [{"type": "mobile", "value": "919800000001"}, {"type": "externalId", "value": "E-1"}],
        "commChannels": [{"type": "email", "value": "a@example.com", "primary": True, "verified": True}],
        "fields": {"city": "Pune\r\nEast"}}], "extendedFields": {"gender": "Male"}}
    # empty cells are left out
    assert second == {"profiles": [{"firstName": "Ann", "source": "INSTORE",
                                    "identifiers": [{"type": "mobile", "value": "919800000002"}]}]}


@pytest.mark.parametrize(("header", "column"), [
    ("firstName,identifiers.mobile,phone", "phone"),
    ("firstName,identifiers.phone", "identifiers.phone"),
    ("identifiers.mobile,commChannels.fax", "commChannels.fax"),
    ("identifiers.mobile,identifiers.mobile", "identifiers.mobile"),
    ("firstName,source", "identifiers"),
])
def test_a_column_we_do_not_know_is_a_400_naming_it(header, column):
    with pytest.raises(ApiError) as refused:
        csv_rows(header + "\r\nx,y,z\r\n")
    assert refused.value.status == 400 and refused.value.field == column
    assert column in refused.value.message


def test_rows_that_are_no_customer_fail_alone_naming_their_row_and_empty_rows_at_the_end_are_ignored():
    from worker.items.csvrows import row_problem

    rows = csv_rows("identifiers.mobile,firstName\n919800000001,A\n\n919800000002\n919800000003,C,extra\n\n\n")

    assert len(rows) == 4
    assert row_problem(rows[0]) is None
    assert row_problem(rows[1]) == "row 3 is empty"
    assert row_problem(rows[2]) == "row 4 has 1 cells where the header has 2 columns"
    assert row_problem(rows[3]) == "row 5 has 3 cells where the header has 2 columns"


@pytest.mark.parametrize(("body", "code"), [
    ("", "invalid_body"), ("identifiers.mobile\r\n", "invalid_body"),
    (b"identifiers.mobile\n\xff\xfe\n", "invalid_body"),
    ('identifiers.mobile,firstName\n919800000001,"A"B\n', "invalid_csv"),
])
def test_a_csv_body_that_cannot_be_read_is_a_400(body, code):
    with pytest.raises(ApiError) as refused:
        csv_rows(body)
    assert refused.value.status == 400 and refused.value.code == code


def test_errors_of_a_csv_row_name_its_row_and_column():
    from worker.items.csvrows import locate
    from worker.items.validation import validate_customer

    element = csv_rows("identifiers.externalId,identifiers.mobile,source,accountId\nE-1,12,WEB_ENGAGE,acc1\n")[0]
    missing = csv_rows("firstName,identifiers.mobile,source\nAnn,,INSTORE\n")[0]

    bad_mobile = locate(validate_customer(element), element, 7)
    no_identifiers = locate(validate_customer(missing), missing, 0)

    assert [(e["row"], e["column"]) for e in bad_mobile] == [(9, "identifiers.mobile")]
    assert bad_mobile[0]["message"].startswith("row 9, column identifiers.mobile: ")
    assert no_identifiers[0]["row"] == 2 and no_identifiers[0]["message"].startswith("row 2, column identifiers.")


def test_a_csv_cell_longer_than_the_limit_is_refused_naming_its_row_and_column():
    with pytest.raises(ApiError) as refused:
        csv_rows("identifiers.mobile,firstName\n919800000001,A\n919800000002," + "x" * (MAX_STRING + 1) + "\n")
    assert refused.value.code == "value_too_long" and refused.value.field == "row 3"
    assert "row 3, column firstName" in refused.value.message
