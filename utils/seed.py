"""Seeds: one config seed drives weight initialisation and the order of the training data."""
import random

import numpy as np
import paddle


def resolve_seed(config: dict) -> dict:
    """A config whose `seed` is set: a random one is drawn (and then recorded) when it is null."""
    if config["seed"] is not None:
        return config
    return {**config, "seed": random.SystemRandom().randrange(2 ** 32)}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)


def epoch_order_seed(seed: int, epoch: int) -> int:
    """The seed of epoch `epoch`'s shuffle: a resumed run sees the very same order."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
