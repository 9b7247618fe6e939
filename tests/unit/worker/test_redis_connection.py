"""REDIS_URL as a server or as Sentinels (Celery's form), and what is refused."""

from __future__ import annotations

import pytest

from worker.redis_connection import SentinelAddress, parse_sentinel_url
from worker.settings import Settings, SettingsError


def test_sentinel_urls_in_celerys_form_give_every_sentinel_the_password_and_the_database():
    assert parse_sentinel_url("sentinel://:s%40cret@10.0.0.1:26379/2;sentinel://10.0.0.2;sentinel://h3:26380") == \
        SentinelAddress(hosts=(("10.0.0.1", 26379), ("10.0.0.2", 26379), ("h3", 26380)), password="s@cret", db=2)


@pytest.mark.parametrize("url, message", [
    ("sentinel://", "not a sentinel://host:port address"),
    ("sentinel://h:26379;redis://h:6379", "not a sentinel://host:port address"),
    ("sentinel://h:notaport", "no valid port"),
    ("sentinel://h:26379/zero", "database must be a number"),
])
def test_a_malformed_sentinel_url_is_refused_at_start_naming_the_variable(url, message):
    with pytest.raises(SettingsError, match=f"REDIS_URL: .*{message}"):
        Settings.from_env({"REDIS_URL": url, "REDIS_SENTINEL_MASTER": "m"})


@pytest.mark.parametrize("variable", ["REDIS_URL", "BROKER_URL"])
def test_sentinels_without_the_primarys_name_are_refused_at_start(variable):
    with pytest.raises(SettingsError, match=f"{variable} names Sentinels.*REDIS_SENTINEL_MASTER"):
        Settings.from_env({variable: "sentinel://127.0.0.1:26379"})


def test_the_primarys_name_and_the_replica_wait_are_read():
    settings = Settings.from_env({"REDIS_URL": "sentinel://127.0.0.1:26379", "REDIS_SENTINEL_MASTER": "cu",
                                  "STORE_REPLICA_WAIT_SECONDS": "0.5"})
    assert (settings.redis_sentinel_master, settings.store_replica_wait_seconds) == ("cu", 0.5)
