"""The upsert's rules that need no downstream: identifier changes, lookup order, the update body,
and how an outcome becomes an item."""

from worker.items.upsert import CREATED, FAILED, ItemOutcome, identifier_changes, order_identifiers, update_body


def ids(*pairs: tuple[str, str]) -> list[dict]:
    return [{"type": t, "value": v} for t, v in pairs]


def test_a_new_mobile_replaces_the_old_one_and_other_types_are_only_added():
    held = {"identifiers": ids(("mobile", "911"), ("cardnumber", "C1"), ("email", "a@x.io"))}
    add, remove = identifier_changes(held, ids(("mobile", "912"), ("cardnumber", "C2"), ("email", "a@x.io")))
    assert add == ids(("mobile", "912"), ("cardnumber", "C2"))
    assert remove == ids(("mobile", "911"))  # the card C1 stays: a customer may hold several cards


def test_nothing_changes_when_the_customer_holds_every_identifier_already():
    held = {"identifiers": ids(("mobile", "911"), ("externalId", "E"))}
    assert identifier_changes(held, ids(("externalId", "E"), ("mobile", "911"))) == ([], [])


def test_an_added_card_keeps_every_field_the_input_gave():
    card = {"type": "cardnumber", "value": "C9", "seriesId": 46, "statusLabel": "ACTIVE"}
    add, _ = identifier_changes({"identifiers": []}, [card, dict(card)])  # given twice, added once
    assert add == [card]


def test_lookup_order_follows_the_priority_and_then_the_input():
    given = ids(("email", "e"), ("unionId", "u"), ("mobile", "m"), ("externalId", "x"))
    ordered = order_identifiers(given, ("externalId", "mobile"))
    assert [i["type"] for i in ordered] == ["externalId", "mobile", "email", "unionId"]


def test_the_update_body_carries_no_identifiers_and_everything_else():
    element = {"profiles": [{"identifiers": ids(("mobile", "1")), "firstName": "A", "source": "INSTORE"}],
               "extendedFields": {"gender": "F"}}
    assert update_body(element) == {"profiles": [{"firstName": "A", "source": "INSTORE"}],
                                    "extendedFields": {"gender": "F"}}
    assert element["profiles"][0]["identifiers"]  # the input itself is untouched


def test_an_item_with_errors_fails_even_when_written_and_its_fields_name_the_submission_path():
    partial = ItemOutcome(CREATED, entity_id=7, errors=[{"status": False, "code": 3017, "message": "label"}])
    invalid = ItemOutcome(FAILED, errors=[{"status": False, "code": 8003, "message": "m", "field": "profiles[0]"}])
    assert partial.failed and partial.as_item(4)["action"] == CREATED and partial.as_item(4)["entityId"] == 7
    assert invalid.as_item(4)["errors"][0]["field"] == "[4].profiles[0]"
