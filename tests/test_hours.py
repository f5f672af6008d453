"""Office hours: the pure rules (open or not, when next), daylight-saving changes, holidays,
and the widget API that keeps them and tells visitors."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loacl.domain.errors import LoaclError
from loacl.domain.hours import (
    CLOSED,
    DAYS,
    NOBODY,
    Away,
    OfficeHours,
    Window,
    away,
    checked_hours,
    is_open,
    next_opening,
)
from loacl.domain.widgets import WidgetCreated, WidgetUpdated
from loacl.settings import Settings
from loacl.store import codec
from tests.test_codec import GOLDEN
from tests.test_owners import World, assert_problem, events, head, world_of

WEEKDAYS = tuple(Window(day=d, opens="09:00", closes="17:30") for d in DAYS[:5])
PARIS = OfficeHours(timezone="Europe/Paris", windows=WEEKDAYS)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


# -- the rules -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("moment", "open_", "opening"), [
    # Monday 2026-11-30: Paris is UTC+1 in winter.
    ("2026-11-30T08:00:00+00:00", True, "2026-11-30T08:00:00+00:00"),  # 9:00 sharp
    ("2026-11-30T07:59:59+00:00", False, "2026-11-30T08:00:00+00:00"),
    ("2026-11-30T16:29:59+00:00", True, "2026-11-30T16:29:59+00:00"),
    ("2026-11-30T16:30:00+00:00", False, "2026-12-01T08:00:00+00:00"),  # closes at 17:30
    # Friday evening waits for Monday morning.
    ("2026-12-04T18:00:00+00:00", False, "2026-12-07T08:00:00+00:00"),
    ("2026-12-05T12:00:00+00:00", False, "2026-12-07T08:00:00+00:00"),
    # Summer time: UTC+2, the same wall clock.
    ("2026-07-06T07:00:00+00:00", True, "2026-07-06T07:00:00+00:00"),
    ("2026-07-06T06:59:00+00:00", False, "2026-07-06T07:00:00+00:00"),
    # Friday 27 March 2026, closed: the next opening is after the clocks go forward on Sunday.
    ("2026-03-27T17:00:00+00:00", False, "2026-03-30T07:00:00+00:00"),
])
def test_open_and_next_opening_in_local_time(moment: str, open_: bool, opening: str) -> None:
    assert is_open(PARIS, at(moment)) is open_
    assert next_opening(PARIS, at(moment)) == at(opening)


def test_closed_dates_are_skipped() -> None:
    hours = checked_hours(OfficeHours(timezone="Europe/Paris", windows=WEEKDAYS,
                                      closed_dates=("2026-12-25", "2026-12-28")))
    christmas_morning = at("2026-12-25T10:00:00+00:00")  # a Friday
    assert not is_open(hours, christmas_morning)
    # Monday the 28th closed too: Tuesday.
    assert next_opening(hours, christmas_morning) == at("2026-12-29T08:00:00+00:00")


def test_an_overnight_shift_is_two_windows() -> None:
    hours = checked_hours(OfficeHours(timezone="America/New_York", windows=(
        Window(day="fri", opens="22:00", closes="24:00"),
        Window(day="sat", opens="00:00", closes="06:00"),
    )))
    # Friday 4 December 2026 23:30 in New York (UTC-5) and Saturday 5:59.
    assert is_open(hours, at("2026-12-05T04:30:00+00:00"))
    assert is_open(hours, at("2026-12-05T10:59:00+00:00"))
    assert not is_open(hours, at("2026-12-05T11:00:00+00:00"))
    assert next_opening(hours, at("2026-12-05T11:00:00+00:00")) == at("2026-12-12T03:00:00+00:00")


def test_no_windows_never_opens() -> None:
    hours = checked_hours(OfficeHours(timezone="UTC"))
    assert not is_open(hours, at("2026-12-01T12:00:00+00:00"))
    assert next_opening(hours, at("2026-12-01T12:00:00+00:00")) is None


def test_a_window_in_the_skipped_hour_opens_when_the_clock_gets_there() -> None:
    # Sunday 29 March 2026 Paris: 2:00 becomes 3:00; a 2:30 opening never shows on a clock.
    hours = checked_hours(OfficeHours(timezone="Europe/Paris", windows=(
        Window(day="sun", opens="02:30", closes="05:00"),)))
    opening = next_opening(hours, at("2026-03-28T12:00:00+00:00"))
    assert opening is not None
    assert at("2026-03-29T00:30:00+00:00") <= opening <= at("2026-03-29T01:30:00+00:00")
    assert is_open(hours, opening)


@pytest.mark.parametrize(("hours", "field"), [
    (OfficeHours(timezone="Mars/Olympus"), "office_hours.timezone"),
    (OfficeHours(timezone=""), "office_hours.timezone"),
    (OfficeHours(windows=(Window(day="monday", opens="09:00", closes="10:00"),)),
     "office_hours.windows.0.day"),
    (OfficeHours(windows=(Window(day="mon", opens="9:00", closes="10:00"),)),
     "office_hours.windows.0.opens"),
    (OfficeHours(windows=(Window(day="mon", opens="09:00", closes="24:01"),)),
     "office_hours.windows.0.closes"),
    (OfficeHours(windows=(Window(day="mon", opens="10:00", closes="10:00"),)),
     "office_hours.windows.0.closes"),
    (OfficeHours(windows=(Window(day="mon", opens="22:00", closes="02:00"),)),
     "office_hours.windows.0.closes"),
    (OfficeHours(windows=(Window(day="tue", opens="09:00", closes="12:00"),
                          Window(day="tue", opens="11:00", closes="14:00"))),
     "office_hours.windows"),
    (OfficeHours(closed_dates=("2026-02-30",)), "office_hours.closed_dates.0"),
    (OfficeHours(windows=tuple(Window(day="mon", opens=f"{h:02}:00", closes=f"{h:02}:30")
                               for h in range(24)) * 2), "office_hours.windows"),
])
def test_bad_hours_are_refused_with_the_field(hours: OfficeHours, field: str) -> None:
    with pytest.raises(LoaclError) as caught:
        checked_hours(hours)
    assert caught.value.code == "validation_error"
    assert caught.value.extra["errors"][0]["field"] == field


def test_checked_hours_sorts_windows_and_drops_repeated_dates() -> None:
    hours = checked_hours(OfficeHours(
        timezone="UTC",
        windows=(Window(day="wed", opens="13:00", closes="17:00"),
                 Window(day="mon", opens="09:00", closes="12:00"),
                 Window(day="wed", opens="09:00", closes="12:00")),
        closed_dates=("2026-12-26", "2026-12-25", "2026-12-26"),
    ))
    assert [(w.day, w.opens) for w in hours.windows] == [
        ("mon", "09:00"), ("wed", "09:00"), ("wed", "13:00")]
    assert hours.closed_dates == ("2026-12-25", "2026-12-26")


# -- properties: the next opening is open, and nothing before it is -------------------------------

ZONES = ["UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu",
         "America/Santiago"]


@st.composite
def office_hours(draw: st.DrawFn) -> OfficeHours:
    windows = []
    for day in DAYS:
        start = 0
        for _ in range(draw(st.integers(0, 2))):
            if start >= 24 * 60 - 15:
                break
            opens = draw(st.integers(start, 24 * 60 - 15)) // 15 * 15
            closes = draw(st.integers(opens + 15, 24 * 60)) // 15 * 15
            if closes <= opens:
                continue
            windows.append(Window(day=day, opens=f"{opens // 60:02}:{opens % 60:02}",
                                  closes=f"{closes // 60:02}:{closes % 60:02}"))
            start = closes
    return checked_hours(OfficeHours(timezone=draw(st.sampled_from(ZONES)),
                                     windows=tuple(windows)))


@settings(max_examples=150, deadline=None)
@given(hours=office_hours(),
       moment=st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31),
                           timezones=st.just(UTC)))
def test_the_next_opening_is_open_and_nothing_earlier_is(
    hours: OfficeHours, moment: datetime
) -> None:
    opening = next_opening(hours, moment)
    if not hours.windows:
        assert opening is None
        return
    assert opening is not None
    assert opening >= moment
    assert is_open(hours, opening)
    assert (opening == moment) is is_open(hours, moment)
    # Windows start on quarter hours of wall-clock time: look every 15 minutes before it.
    probe = moment
    while probe < opening - timedelta(seconds=1):
        assert not is_open(hours, probe), (probe, opening)
        probe += timedelta(minutes=15)


# -- the API: kept with the widget, told to visitors ---------------------------------------------

HOURS_BODY: dict[str, Any] = {
    "timezone": "Europe/Paris",
    "windows": [{"day": d, "opens": "09:00", "closes": "17:30"} for d in DAYS[:5]],
    "closed_dates": ["2026-12-25"],
}


@pytest.fixture
def world(settings: Settings) -> Iterator[World]:
    with world_of(settings) as built:
        yield built


def test_a_widget_keeps_its_office_hours(world: World) -> None:
    assistant = world.assistant(world.a)
    created = world.widget(world.a, assistant["id"], office_hours=HOURS_BODY)
    assert created["office_hours"] == HOURS_BODY
    path = f"/api/v1/widgets/{created['id']}"
    assert world.client.get(path, headers=world.a.headers).json()["office_hours"] == HOURS_BODY
    [logged] = [r for r in events(world.settings) if r.type == "widget.created"]
    assert logged.payload["definition"]["office_hours"]["timezone"] == "Europe/Paris"

    # A merge patch (RFC 7396) changes what it names and keeps the rest; null removes them.
    before = head(world.settings)
    patched = world.client.patch(path, json={"office_hours": {"timezone": "Asia/Tokyo"}},
                                 headers=world.a.headers)
    assert patched.status_code == 200, patched.text
    assert patched.json()["office_hours"] == {**HOURS_BODY, "timezone": "Asia/Tokyo"}
    removed = world.client.patch(path, json={"office_hours": None}, headers=world.a.headers)
    assert removed.json()["office_hours"] is None
    assert [r.type for r in events(world.settings, before)] == ["widget.updated"] * 2


@pytest.mark.parametrize(("hours", "field"), [
    ({"timezone": "Europe/Atlantis"}, "office_hours.timezone"),
    ({"timezone": "UTC", "windows": [{"day": "mon", "opens": "18:00", "closes": "09:00"}]},
     "office_hours.windows.0.closes"),
    ({"timezone": "UTC", "windows": [{"day": "mon", "opens": "25:00", "closes": "26:00"}]},
     "office_hours.windows.0.opens"),
    ({"timezone": "UTC", "windows": [{"day": "funday", "opens": "09:00", "closes": "10:00"}]},
     "office_hours.windows.0.day"),
    ({"timezone": "UTC", "closed_dates": ["tomorrow"]}, "office_hours.closed_dates.0"),
    ({"windows": []}, "office_hours.timezone"),
])
def test_bad_office_hours_are_refused_and_nothing_is_written(
    world: World, hours: dict[str, Any], field: str
) -> None:
    assistant = world.assistant(world.a)
    before = head(world.settings)
    response = world.client.post(
        "/api/v1/widgets", json={"name": "Site", "assistant_id": assistant["id"],
                                 "office_hours": hours}, headers=world.a.headers)
    assert_problem(response, 422, "validation_error", field)
    assert events(world.settings, before) == []


SITE = "https://shop.example.com"


def config_of(world: World, widget: dict[str, Any]) -> dict[str, Any]:
    response = world.client.get(f"/api/v1/widgets/{widget['id']}/config",
                                headers={"Origin": SITE})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_the_visitor_config_says_whether_someone_is_there(world: World) -> None:
    assistant = world.assistant(world.a)
    plain = world.widget(world.a, assistant["id"], allowed_origins=[SITE])
    config = config_of(world, plain)
    assert config["availability"] == {"office_hours": False, "open": True,
                                      "next_opening": None, "timezone": None}

    always = {"timezone": "Pacific/Auckland",
              "windows": [{"day": d, "opens": "00:00", "closes": "24:00"} for d in DAYS]}
    open_ = world.widget(world.a, assistant["id"], allowed_origins=[SITE], office_hours=always)
    config = config_of(world, open_)
    assert config["availability"]["open"] is True
    assert config["availability"]["timezone"] == "Pacific/Auckland"

    never = world.widget(world.a, assistant["id"], allowed_origins=[SITE],
                         office_hours={"timezone": "UTC"})
    config = config_of(world, never)
    assert config["availability"] == {"office_hours": True, "open": False,
                                      "next_opening": None, "timezone": "UTC"}

    # Open one hour a week, far from now: closed, and the opening is within the week.
    now = datetime.now(UTC)
    far = now + timedelta(days=3)
    weekly = {"timezone": "UTC", "windows": [
        {"day": DAYS[far.weekday()], "opens": f"{far.hour:02}:00",
         "closes": f"{far.hour + 1:02}:00" if far.hour < 23 else "24:00"}]}
    later = world.widget(world.a, assistant["id"], allowed_origins=[SITE], office_hours=weekly)
    told = config_of(world, later)["availability"]
    assert told["open"] is False
    opening = datetime.fromisoformat(told["next_opening"])
    assert opening == far.replace(minute=0, second=0, microsecond=0)


def test_widgets_written_before_office_hours_read_as_having_none() -> None:
    """The log keeps v3 widget events (written before hours existed): they read as none, and
    the rest of their definition as it was."""
    for event_type in ("widget.created", "widget.updated"):
        raw = (GOLDEN / f"{event_type}.v3.json").read_bytes()
        decoded = codec.decode_payload(event_type, 3, raw)
        assert isinstance(decoded, (WidgetCreated, WidgetUpdated))
        assert decoded.definition.office_hours is None
        assert decoded.definition.settings.prechat_fields == ("name", "email")


# -- nobody there ------------------------------------------------------------------------------


def test_away_says_closed_with_the_next_opening_or_nobody_online() -> None:
    hours = OfficeHours(timezone="Europe/Berlin", windows=(
        Window(day="mon", opens="09:00", closes="17:00"),))
    saturday_noon = at("2026-12-05T12:00:00+00:00")
    monday_ten = at("2026-12-07T09:00:00+00:00")  # 10:00 in Berlin
    assert away(hours, True, saturday_noon) == Away(
        CLOSED, at("2026-12-07T08:00:00+00:00"), "Europe/Berlin")
    assert away(hours, True, monday_ten) is None
    assert away(hours, False, monday_ten) == Away(NOBODY, None, "Europe/Berlin")
    assert away(None, True, saturday_noon) is None  # no hours kept: always open
    assert away(None, False, saturday_noon) == Away(NOBODY, None, None)
    never = OfficeHours(timezone="UTC")
    assert away(never, True, saturday_noon) == Away(CLOSED, None, "UTC")
