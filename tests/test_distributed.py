"""--n_gpu N: two paddle.distributed workers (gloo on CPU) each take half of a batch; the
all-reduced gradient equals the single-process gradient of the whole batch."""
import numpy as np
import pytest


def _grads(payload):
    import paddle
    import paddle.nn.functional as F

    from ofaserve.compress import distributed as dist
    from ofaserve.compress.bert import build_classifier, tiny_config

    paddle.seed(0)
    model = build_classifier(tiny_config())  # dropout 0: the update is deterministic
    ids, types, y = payload["batch"]
    ids, types, y = dist.shard(ids, types, y)
    loss = F.cross_entropy(model(paddle.to_tensor(ids), paddle.to_tensor(types)), paddle.to_tensor(y))
    loss.backward()
    dist.sync_gradients(model.parameters())
    grads = {n: p.grad.numpy() for n, p in model.named_parameters() if p.grad is not None}
    if dist.is_main():
        np.savez(payload["out"], **grads)


@pytest.mark.slow
def test_two_workers_average_gradients_like_one(tmp_path):
    from ofaserve.compress import distributed as dist

    rs = np.random.RandomState(0)
    ids = rs.randint(5, 128, (8, 12)).astype("int64")
    batch = (ids, np.zeros_like(ids), rs.randint(0, 2, 8).astype("int64"))
    _grads({"batch": batch, "out": str(tmp_path / "one.npz")})
    dist.launch(_grads, {"batch": batch, "out": str(tmp_path / "two.npz")}, nprocs=2)
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert set(one.files) == set(two.files) and len(one.files) > 10
    worst = max(float(np.abs(one[k] - two[k]).max()) for k in one.files)
    assert worst < 1e-5, worst
