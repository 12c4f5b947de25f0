"""The protocol rows of benchmark.py: the Fashion-MNIST class estimate and a measurement."""
import pytest

from utils.training_speed import fashion_mnist_minutes, fashion_mnist_peak_minutes, measure


def test_fashion_mnist_class_estimate_adds_up_its_parts():
    rates = {"expert": 100.0, "train": 1000.0, "score": 2000.0}
    expert = (6000 + 10000) / 100.0  # both splits once
    epochs = 52 * 6000 / 1000.0  # epochs 0..51
    scoring = (6 * 10000 + 7 * 6000) / 2000.0  # 6 test evaluations, 7 saved models' thresholds
    assert fashion_mnist_minutes(rates) == pytest.approx((expert + epochs + scoring) / 60.0)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["default", "former"])
def test_measure_reports_positive_rates(variant):
    rates = measure(32, 4, variant, steps=1, expert=True)
    assert set(rates) == {"train", "score", "expert"}
    assert all(rate > 0 for rate in rates.values())


def test_the_peak_floor_counts_three_forwards_per_training_image():
    """1 FLOP per forward of either network at 1 FLOP/s: seconds = forwards."""
    cloner_forwards = 3 * 52 * 6000 + 6 * 10000 + 7 * 6000
    assert fashion_mnist_peak_minutes(1.0, 1.0, 0.0) == pytest.approx(cloner_forwards / 60.0)
    assert fashion_mnist_peak_minutes(2.0, 0.0, 1.0) == pytest.approx(16000 / 2.0 / 60.0)
