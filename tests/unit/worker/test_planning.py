"""Which items of a job must run in order."""

from worker.dispatch.planning import ChainPlanner, identifier_keys


def element(*identifiers: tuple[str, str], source: str = "INSTORE", account: str = "") -> dict:
    return {"profiles": [{"identifiers": [{"type": t, "value": v} for t, v in identifiers], "source": source,
                          "accountId": account}]}


def plan(*elements) -> dict[int, int]:
    planner = ChainPlanner()
    for e in elements:
        planner.add(e)
    return planner.chains()


def test_items_sharing_an_identifier_run_in_input_order_and_others_run_alone():
    chains = plan(element(("mobile", "1")), element(("email", "a@b.c")), element(("mobile", "1")),
                  element(("mobile", "1")))
    assert chains == {0: 2, 2: 3}


def test_groups_are_transitive():
    # 0 shares a mobile with 2, and 2 an email with 1: all three run in input order.
    chains = plan(element(("mobile", "1")), element(("email", "e")), element(("mobile", "1"), ("email", "e")))
    assert chains == {0: 1, 1: 2}


def test_the_same_value_in_another_source_or_account_is_another_identifier():
    chains = plan(element(("mobile", "1")), element(("mobile", "1"), source="WEB_ENGAGE", account="a"),
                  element(("mobile", "1"), source="WEB_ENGAGE", account="b"))
    assert chains == {}


def test_junk_elements_have_no_identifiers_and_are_never_chained():
    assert identifier_keys("junk") == identifier_keys({"profiles": "x"}) == []
    assert identifier_keys({"profiles": [{"identifiers": [{"type": "mobile"}, "x", {"value": "1"}]}]}) == []
    assert plan("junk", None, element(("mobile", "1"))) == {}


def test_flushing_a_chunk_at_a_time_plans_as_one_pass_does_and_holds_only_shared_items():
    import random

    rng = random.Random(7)
    elements = [element(*[(kind, str(rng.randrange(40))) for kind in rng.sample(["mobile", "email", "externalId"], 2)])
                for _ in range(300)]
    whole = plan(*elements)
    for chunk in (1, 7, 100):
        planner = ChainPlanner()
        for n, e in enumerate(elements, 1):
            planner.add(e)
            if n % chunk == 0:
                planner.flush()
        assert planner.chains() == whole, chunk

    lonely = ChainPlanner()
    for i in range(2000):
        lonely.add(element(("mobile", str(i))))
        if i % 100 == 99:
            lonely.flush()
    assert lonely._pending == [] and lonely._parent == {} and lonely.chains() == {}
