"""The intraday volume profile (core/volume_profile.py), and the retired path model the leak test must catch
(tests/old_path_model.py), which the fake Alpaca server still uses for its live snapshots."""
import numpy as np
import pytest

from core import volume_profile

import old_path_model as intraday_path


def test_volume_profile_is_u_shaped_and_about_22_percent_by_1030():
    assert volume_profile.volume_fraction(0.0) == 0.0
    assert volume_profile.volume_fraction(1.0) == pytest.approx(1.0)
    assert volume_profile.volume_fraction(60 / 390) == pytest.approx(0.22, abs=0.002)
    first_hour = volume_profile.volume_fraction(60 / 390)
    middle_hour = volume_profile.volume_fraction(225 / 390) - volume_profile.volume_fraction(165 / 390)
    assert first_hour > 2 * middle_hour


def test_path_visits_nearer_extreme_first():
    # open 10 is nearer the low 9 than the high 12: open -> low -> high -> close
    assert intraday_path.price_at(10, 12, 9, 11, [0, 1 / 6, 1 / 3, 0.5, 2 / 3, 1]).tolist() == pytest.approx(
        [10, 9.5, 9, 10.5, 12, 11])
    # open 11.5 is nearer the high: open -> high -> low -> close
    assert intraday_path.price_at(11.5, 12, 9, 10, 1 / 3) == pytest.approx(12)
    assert intraday_path.price_at(11.5, 12, 9, 10, 2 / 3) == pytest.approx(9)


def test_range_so_far_and_vectorised_arrays():
    high, low = intraday_path.range_so_far(np.array([10.0, 11.5]), np.array([12.0, 12.0]), np.array([9.0, 9.0]),
                                       np.array([11.0, 10.0]), 0.5)
    assert high.tolist() == pytest.approx([10.5, 12.0])
    assert low.tolist() == pytest.approx([9.0, 10.5])


def test_bad_bar_is_clamped_inside_its_range():
    # open above the high (dirty data): the path still never leaves [min, max] of the four prices
    prices = intraday_path.price_at(13, 12, 9, 11, np.linspace(0, 1, 31))
    assert prices.max() <= 13 and prices.min() >= 9


def test_path_points_between_two_fractions():
    points = intraday_path.path_points(10, 12, 9, 11, 0.1, 0.9)
    # approx compares flat sequences only (pytest 9 refuses nested ones): times and prices are checked apart
    assert [t for t, _ in points] == pytest.approx([0.1, 1 / 3, 2 / 3, 0.9])
    assert [price for _, price in points] == pytest.approx([9.7, 9.0, 12.0, 11.3])
