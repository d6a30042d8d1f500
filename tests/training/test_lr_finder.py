"""The learning-rate range test on real (generated) images and a tiny timm model: the range it
suggests leaves out the rates at which the loss diverges, and a rate inside it trains."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.conftest import tiny_config
from training import ConfigError, NonFiniteLossError, train
from training.lr_finder import diverged_after, lr_find, rates_between, suggest


def test_rates_rise_by_one_factor_from_start_to_end():
    rates = rates_between(1e-6, 1.0, 7)
    assert math.isclose(rates[0], 1e-6) and math.isclose(rates[-1], 1.0)
    assert np.allclose(rates[1:] / rates[:-1], 10.0)


def test_the_range_runs_from_the_fastest_fall_to_the_lowest_loss():
    rates = rates_between(1e-5, 1.0, 21)  # four steps a decade
    falls = [2.0, 2.0, 2.0, 1.99, 1.98, 1.9, 1.7, 1.3, 1.0, 0.9, 0.85, 0.8, 0.78, 0.76, 0.75, 0.9, 1.5, 3, 5, 8, 9]
    falls = np.array(falls)
    low, high = suggest(rates, falls)
    assert math.isclose(high, rates[14]) and math.isclose(low, rates[7])
    flat_then_up = np.array([2.0] * 3 + [1.9] + [3.0] * 17)  # lowest early: a decade below it
    assert suggest(rates, flat_then_up) == (rates[3] / 10, rates[3])


def test_a_curve_that_rose_four_times_its_lowest_after_it_diverged_where_it_first_did():
    rates = rates_between(1e-5, 1.0, 21)
    falls = [2.0, 2.0, 2.0, 1.99, 1.98, 1.9, 1.7, 1.3, 1.0, 0.9, 0.85, 0.8, 0.78, 0.76, 0.75, 0.9, 1.5, 3, 5, 8, 9]
    assert math.isclose(diverged_after(rates, np.array(falls)), rates[18])  # 5 > 4 x 0.75; 3 is not
    risen_twice = np.array(falls[:17] + [1.5] * 4)
    assert diverged_after(rates, risen_twice) is None
    still_falling = np.linspace(2.0, 0.5, 21)
    assert diverged_after(rates, still_falling) is None


@pytest.mark.slow
def test_the_suggested_range_leaves_out_divergent_rates_and_holds_one_that_trains():
    config = tiny_config(epochs=3, batch_size=32)
    test = lr_find(config, 1e-6, 30.0, steps=48)
    assert test.diverged_at is not None, "rates up to 30 should make the loss diverge"
    assert test.low < test.high < test.diverged_at / 10
    assert test.losses.index(min(test.losses)) < len(test.losses) - 1  # it turned up before the end

    inside = math.sqrt(test.low * test.high)
    trained = train(config.model_copy(update={"optimizer": config.optimizer.model_copy(update={"lr": inside})}))
    losses = [epoch["train_loss"] for epoch in trained.history]
    assert losses[-1] < losses[0] and trained.best_metrics["macro_f1"] > 0.3, (inside, losses, trained.best_metrics)

    too_high = config.model_copy(update={"optimizer": config.optimizer.model_copy(update={"lr": test.diverged_at})})
    try:
        worst = train(too_high).best_metrics["macro_f1"]
    except NonFiniteLossError:
        worst = 0.0
    assert worst < trained.best_metrics["macro_f1"] - 0.1, (test.diverged_at, worst)


def test_a_loss_that_diverges_from_the_first_steps_is_one_error_saying_to_lower_the_bounds():
    with pytest.raises(ConfigError, match=r"the loss diverged after \d+ steps .* lower the space's lr bounds"):
        lr_find(tiny_config(batch_size=32), 1e3, 1e8, steps=40)
