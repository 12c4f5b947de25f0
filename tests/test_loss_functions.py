"""The distillation loss, the anomaly score and its hand-written gradient, against NumPy and
paddle.grad."""
import numpy as np
import paddle
import pytest

from loss_functions import (DirectionOnlyLoss, MseDirectionLoss, anomaly_score, build_loss,
                            score_gradients)

# stage output shapes of a 32 px input: [N, 128, 8, 8] ... [N, 512, 1, 1]
STAGE_SHAPES = [(128, 8, 8), (256, 4, 4), (512, 2, 2), (512, 1, 1)]
BATCH = 3


def random_stages(rng, batch=BATCH, relu=True):
    stages = [rng.standard_normal((batch, *shape)) for shape in STAGE_SHAPES]
    if relu:  # stage outputs come after a ReLU and a max-pool
        stages = [np.maximum(stage, 0.0) + 0.01 * rng.random(stage.shape) for stage in stages]
    return [stage.astype(np.float32) for stage in stages]


def tensors(arrays, stop_gradient=True):
    return [paddle.to_tensor(array, stop_gradient=stop_gradient) for array in arrays]


def np_cos_distance(c, e):
    """[N]: 1 - cosine of the per-image flattened stage outputs (float64)."""
    c = c.reshape(len(c), -1).astype(np.float64)
    e = e.reshape(len(e), -1).astype(np.float64)
    return 1.0 - (c * e).sum(1) / np.sqrt((c * c).sum(1) * (e * e).sum(1))


def np_mse(c, e):
    """[N]: mean squared error over all elements of each image."""
    diff = (c.astype(np.float64) - e.astype(np.float64)).reshape(len(c), -1)
    return (diff ** 2).mean(1)


def np_loss(cloner, expert, lamda, direction_only=False):
    """METHOD.md: sum_l mean_batch(1 - cos) + lamda * sum_l MSE(c_l, e_l), over the 4 stages."""
    total = sum(np_cos_distance(c, e).mean() for c, e in zip(cloner, expert))
    if not direction_only:
        total += lamda * sum(((c.astype(np.float64) - e) ** 2).mean()
                             for c, e in zip(cloner, expert))
    return total


def np_score(cloner, expert, lamda, direction_only=False):
    """METHOD.md: per image, sum over stages 2..4 of (1 - cos) + lamda * mean squared error."""
    total = sum(np_cos_distance(cloner[l], expert[l]) for l in (1, 2, 3))
    if not direction_only:
        total = total + lamda * sum(np_mse(cloner[l], expert[l]) for l in (1, 2, 3))
    return total


@pytest.mark.parametrize("lamda", [0.0, 0.01, 0.5, 3.0])
def test_mse_direction_loss_equals_numpy(rng, lamda):
    cloner, expert = random_stages(rng), random_stages(rng)
    loss = MseDirectionLoss(lamda)(tensors(cloner), tensors(expert))
    assert loss.shape == []
    np.testing.assert_allclose(float(loss), np_loss(cloner, expert, lamda), rtol=1e-5)


def test_direction_only_loss_drops_the_mse_term(rng):
    cloner, expert = random_stages(rng), random_stages(rng)
    expected = np_loss(cloner, expert, 0.0, direction_only=True)
    np.testing.assert_allclose(float(DirectionOnlyLoss()(tensors(cloner), tensors(expert))),
                               expected, rtol=1e-5)
    np.testing.assert_allclose(
        float(MseDirectionLoss(7.0, direction_only=True)(tensors(cloner), tensors(expert))),
        expected, rtol=1e-5)


def test_build_loss_follows_the_config(rng):
    cloner, expert = random_stages(rng), random_stages(rng)
    loss = build_loss({"lamda": 0.25, "direction_loss_only": False})
    np.testing.assert_allclose(float(loss(tensors(cloner), tensors(expert))),
                               np_loss(cloner, expert, 0.25), rtol=1e-5)
    loss = build_loss({"lamda": 0.25, "direction_loss_only": True})
    np.testing.assert_allclose(float(loss(tensors(cloner), tensors(expert))),
                               np_loss(cloner, expert, 0.0, direction_only=True), rtol=1e-5)


def test_loss_uses_all_four_stages(rng):
    cloner, expert = random_stages(rng), random_stages(rng)
    changed = [cloner[0] + 1.0] + cloner[1:]
    loss = MseDirectionLoss(0.5)
    assert float(loss(tensors(changed), tensors(expert))) != pytest.approx(
        float(loss(tensors(cloner), tensors(expert))), rel=1e-4)


@pytest.mark.parametrize("lamda", [0.0, 0.01, 0.5, 3.0])
@pytest.mark.parametrize("direction_only", [False, True])
def test_anomaly_score_equals_numpy(rng, lamda, direction_only):
    cloner, expert = random_stages(rng), random_stages(rng)
    score = anomaly_score(tensors(cloner), tensors(expert), lamda, direction_only)
    assert score.shape == [BATCH]
    np.testing.assert_allclose(score.numpy(), np_score(cloner, expert, lamda, direction_only),
                               rtol=1e-5)


def test_anomaly_score_ignores_stage_1(rng):
    cloner, expert = random_stages(rng), random_stages(rng)
    score = anomaly_score(tensors(cloner), tensors(expert), 0.5).numpy()
    other_cloner = [rng.random(cloner[0].shape).astype(np.float32) * 5] + cloner[1:]
    other_expert = [rng.random(expert[0].shape).astype(np.float32)] + expert[1:]
    np.testing.assert_array_equal(
        anomaly_score(tensors(other_cloner), tensors(other_expert), 0.5).numpy(), score)
    # ... while each of stages 2..4 does change it
    for l in (1, 2, 3):
        moved = list(cloner)
        moved[l] = moved[l] * 2.0 + 0.5
        assert not np.allclose(anomaly_score(tensors(moved), tensors(expert), 0.5).numpy(),
                               score, rtol=1e-4)


def test_anomaly_score_of_one_image_does_not_depend_on_the_batch(rng):
    cloner, expert = random_stages(rng), random_stages(rng)
    batch = anomaly_score(tensors(cloner), tensors(expert), 0.5).numpy()
    for i in range(BATCH):
        alone = anomaly_score(tensors([c[i:i + 1] for c in cloner]),
                              tensors([e[i:i + 1] for e in expert]), 0.5).numpy()
        np.testing.assert_allclose(alone, batch[i:i + 1], rtol=1e-6)


def autograd_stage_gradients(cloner, expert, lamda, direction_only):
    cloner_t, expert_t = tensors(cloner, False), tensors(expert, False)
    score = anomaly_score(cloner_t, expert_t, lamda, direction_only).sum()
    grads = paddle.grad(score, cloner_t + expert_t, allow_unused=True)
    return grads[:4], grads[4:]


@pytest.mark.parametrize("lamda", [0.01, 0.5, 3.0])
@pytest.mark.parametrize("direction_only", [False, True])
def test_score_gradients_equal_autograd(rng, lamda, direction_only):
    cloner, expert = random_stages(rng), random_stages(rng, relu=False)
    hand_c, hand_e = score_gradients(tensors(cloner), tensors(expert), lamda, direction_only)
    auto_c, auto_e = autograd_stage_gradients(cloner, expert, lamda, direction_only)
    assert hand_c[0] is None and hand_e[0] is None
    assert auto_c[0] is None and auto_e[0] is None  # autograd agrees: stage 1 is unused
    for l in (1, 2, 3):
        for hand, auto in ((hand_c[l], auto_c[l]), (hand_e[l], auto_e[l])):
            assert hand.shape == auto.shape
            scale = np.abs(auto.numpy()).max()
            np.testing.assert_allclose(hand.numpy(), auto.numpy(), rtol=1e-4,
                                       atol=1e-5 * scale)


def test_score_gradients_equal_autograd_for_an_all_zero_stage(rng):
    """A ReLU stage can be all zeros: the cosine's norm is then clipped at eps."""
    cloner, expert = random_stages(rng), random_stages(rng)
    cloner[3][1] = 0.0  # image 1's cloner stage 4
    expert[2][2] = 0.0  # image 2's expert stage 3
    hand_c, hand_e = score_gradients(tensors(cloner), tensors(expert), 0.5)
    auto_c, auto_e = autograd_stage_gradients(cloner, expert, 0.5, False)
    for l in (1, 2, 3):
        for hand, auto in ((hand_c[l], auto_c[l]), (hand_e[l], auto_e[l])):
            assert np.isfinite(hand.numpy()).all()
            np.testing.assert_allclose(hand.numpy(), auto.numpy(), rtol=1e-4,
                                       atol=1e-5 * np.abs(auto.numpy()).max())


def former_discrepancy(cloner_stage, expert_stage, lamda):
    """stage_discrepancy as it was written before, with `** 2`."""
    c, e = cloner_stage.flatten(1), expert_stage.flatten(1)
    discrepancy = 1 - paddle.nn.functional.cosine_similarity(c, e, axis=1, eps=1e-8)
    return discrepancy + lamda * ((c - e) ** 2).mean(axis=1)


def test_squared_difference_keeps_the_gradient_of_the_power_bit_for_bit(rng):
    """The MSE term squares with paddle.square where it used `** 2` (Paddle's CPU pow is slow
    and off by one ulp in some values): the training gradient is the same to the last bit, so
    trained weights do not change, and the loss moves by at most a few ulps."""
    cloner = tensors(random_stages(rng, batch=16), stop_gradient=False)
    expert = tensors(random_stages(rng, batch=16))
    lamda = 0.01  # Fashion-MNIST's: not a power of two, so that any change of the sums shows
    loss = MseDirectionLoss(lamda)(cloner, expert)
    former = paddle.add_n([former_discrepancy(c, e, lamda).mean() for c, e in zip(cloner, expert)])
    new_grads = paddle.grad([loss], cloner)
    former_grads = paddle.grad([former], cloner)
    for new, old in zip(new_grads, former_grads):
        assert np.array_equal(new.numpy(), old.numpy())
    np.testing.assert_allclose(float(loss), float(former), rtol=1e-6)
