"""Release changes go to the releases topic of the real embedded broker, and an application reads its champion
from there, following a rollback within the cache's time."""

from __future__ import annotations

from datetime import datetime, timezone

from flywheel.config import Settings
from flywheel.streams.releases import ChampionFeed, champion_of, publish
from flywheel.warehouse.releases import Release


def _release(seq: int, model: str, action: str = "promote") -> Release:
    return Release("support-bot", action, model, f"v{seq}", None, f"run-{seq}", datetime.now(timezone.utc), False,
                   "", "", seq)


def test_promote_then_rollback_is_what_the_feed_reads(kafka_settings: Settings) -> None:
    s = kafka_settings
    feed = ChampionFeed(s, ttl_s=0)
    assert feed.champion("support-bot") is None  # no topic yet: no champion, no error
    publish(s, champion_of(_release(1, "gpt-4o")))
    publish(s, champion_of(_release(2, "gpt-4o-mini")))
    assert feed.champion("support-bot").model == "gpt-4o-mini"
    publish(s, champion_of(_release(3, "gpt-4o", "rollback")))
    now = feed.champion("support-bot")
    assert (now.model, now.action, now.sequence) == ("gpt-4o", "rollback", 3)
    cached = ChampionFeed(s, ttl_s=60)
    assert cached.champion("support-bot").sequence == 3
    publish(s, champion_of(_release(4, "gpt-4.1")))
    assert cached.champion("support-bot").sequence == 3  # cached for a minute ...
    assert ChampionFeed(s, ttl_s=0).champion("support-bot").sequence == 4  # ... a fresh read sees the change
    assert feed.champion("another-app") is None


def test_the_sdk_follows_a_rollback_without_a_redeploy(kafka_settings: Settings) -> None:
    from flywheel.streams.client import FlywheelClient

    s = kafka_settings
    publish(s, champion_of(_release(1, "gpt-4o")))
    with FlywheelClient(s, champion_ttl_s=0) as fw:
        assert fw.champion("support-bot").model == "gpt-4o"
        publish(s, champion_of(_release(2, "gpt-4o-mini")))
        assert fw.champion("support-bot").model == "gpt-4o-mini"
        publish(s, champion_of(_release(3, "gpt-4o", "rollback")))
        assert (fw.champion("support-bot").model, fw.champion("support-bot").action) == ("gpt-4o", "rollback")
