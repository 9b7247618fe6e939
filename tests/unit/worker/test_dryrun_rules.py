"""A dry run's rules that need no downstream: what an update would change, and the customer it would leave."""

from worker.items.dryrun import applied, field_changes, masked

HELD = {"id": 7, "profiles": [{"source": "WEB_ENGAGE", "accountId": "acc1", "firstName": "Ann", "lastName": "Lee",
                               "fields": {"city": "Pune"},
                               "identifiers": [{"type": "mobile", "value": "919800000001"},
                                               {"type": "externalId", "value": "E-1"}],
                               "commChannels": [{"type": "email", "value": "a@x.io"}]}],
        "extendedFields": {"gender": "Female"}}


def element(**profile) -> dict:
    extended = profile.pop("extendedFields", None)
    base = {"profiles": [{"source": "WEB_ENGAGE", "accountId": "acc1",
                          "identifiers": [{"type": "externalId", "value": "E-1"}], **profile}]}
    return base | ({"extendedFields": extended} if extended else {})


def test_an_update_shows_only_what_it_would_change_as_old_and_new():
    wanted = element(firstName="Ann", lastName="Li", fields={"city": "Pune", "tier": "gold"},
                     commChannels=[{"type": "email", "value": "b@x.io"}], extendedFields={"gender": "Female"})

    assert field_changes(HELD, wanted, "WEB_ENGAGE", "acc1") == {
        "lastName": {"old": "Lee", "new": "Li"},
        "fields.tier": {"old": None, "new": "gold"},
        "commChannels.email": {"old": "a@x.io", "new": "b@x.io"},
    }


def test_a_create_shows_every_field_it_would_set():
    assert field_changes(None, element(firstName="Bo", extendedFields={"gender": "Male"}), "WEB_ENGAGE", "acc1") == {
        "firstName": {"old": None, "new": "Bo"}, "extendedFields.gender": {"old": None, "new": "Male"}}


def test_the_customer_an_update_would_leave_has_the_new_fields_and_identifiers():
    mobile = [{"type": "mobile", "value": "919800000002"}]
    after = applied(HELD, element(firstName="Anne"), "WEB_ENGAGE", "acc1", add=mobile,
                    remove=[{"type": "mobile", "value": "919800000001"}])

    profile = after["profiles"][0]
    assert profile["firstName"] == "Anne" and profile["lastName"] == "Lee"
    assert profile["identifiers"] == [{"type": "externalId", "value": "E-1"}, *mobile]
    assert HELD["profiles"][0]["firstName"] == "Ann"  # the customer found is left as it was


def test_identifier_values_are_masked():
    assert masked([{"type": "mobile", "value": "919800000002"}]) == [{"type": "mobile", "value": "91********02"}]
