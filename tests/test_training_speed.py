"""The protocol rows of benchmark.py: the Fashion-MNIST class estimate and a measurement."""
import pytest

from utils.training_speed import fashion_mnist_minutes, measure


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
