from datetime import date, datetime, timezone

import pytest
from freezegun import freeze_time

from common.clock import NY, Clock, calendar, parse_asof
from common.errors import ConfigError


def test_naive_asof_is_new_york_time():
    assert parse_asof("2016-11-09T10:30") == datetime(2016, 11, 9, 15, 30, tzinfo=timezone.utc)
    assert parse_asof("2016-07-05T10:30") == datetime(2016, 7, 5, 14, 30, tzinfo=timezone.utc)  # EDT
    assert parse_asof("2016-11-09T15:30:00Z") == datetime(2016, 11, 9, 15, 30, tzinfo=timezone.utc)
    assert parse_asof("2016-11-09") == datetime(2016, 11, 9, 21, 0, tzinfo=timezone.utc)  # a date = 16:00 NY


@pytest.mark.parametrize("text", ["yesterday", "2016-13-01", "2016-11-09T25:00", ""])
def test_unparseable_asof_is_a_config_error(text):
    with pytest.raises(ConfigError, match="--asof"):
        parse_asof(text)


def test_real_clock_follows_frozen_time():
    with freeze_time("2024-03-15 14:00:00"):
        clock = Clock()
        assert clock.now() == datetime(2024, 3, 15, 14, 0, tzinfo=timezone.utc)
        assert clock.today() == date(2024, 3, 15)
        assert not clock.simulated


def test_simulated_clock_is_fixed_and_settable():
    clock = Clock(parse_asof("2016-11-09T10:30"))
    assert clock.simulated and clock.now_ny().hour == 10
    clock.set(datetime(2016, 11, 10, 11, 0))
    assert clock.now_ny() == datetime(2016, 11, 10, 11, 0, tzinfo=NY)


def test_holidays_early_closes_and_weekends():
    cal = calendar()
    assert not cal.is_session(date(2016, 11, 24))  # Thanksgiving
    assert not cal.is_session(date(2016, 11, 26))  # Saturday
    friday = cal.session(date(2016, 11, 25))
    assert friday.early_close and friday.close.astimezone(NY).hour == 13
    assert not cal.session(date(2016, 11, 23)).early_close
    assert cal.next_session(date(2016, 11, 23)) == date(2016, 11, 25)
    assert cal.previous_session(date(2016, 11, 28)) == date(2016, 11, 25)
    assert cal.sessions(date(2016, 11, 21), date(2016, 11, 27)) == [
        date(2016, 11, 21), date(2016, 11, 22), date(2016, 11, 23), date(2016, 11, 25)]


def test_market_hours_and_session_fraction():
    cal = calendar()
    assert cal.is_open(parse_asof("2016-11-09T09:30"))
    assert not cal.is_open(parse_asof("2016-11-09T09:29"))
    assert not cal.is_open(parse_asof("2016-11-09T16:00"))
    assert not cal.is_open(parse_asof("2016-11-25T13:30"))  # after the early close
    session, fraction = cal.current_or_last_session(parse_asof("2016-11-09T10:30"))
    assert session.day == date(2016, 11, 9) and fraction == pytest.approx(60 / 390)
    session, fraction = cal.current_or_last_session(parse_asof("2016-11-12T12:00"))  # Saturday
    assert session.day == date(2016, 11, 11) and fraction == 1.0
    session, fraction = cal.current_or_last_session(parse_asof("2016-11-10T08:00"))  # before the open
    assert session.day == date(2016, 11, 9) and fraction == 1.0
    assert cal.next_open(parse_asof("2016-11-25T14:00")) == parse_asof("2016-11-28T09:30")
