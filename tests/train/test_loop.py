"""Trainer: probes scheduled by step, divergence, and state_dict round trips that continue bit for bit."""

import numpy as np
import pytest

from smoothnorm import optim, train
from smoothnorm.measure.landscape import probe_gradient_direction
from smoothnorm.nn import models
from smoothnorm.train.probes import paper as paper_probes


def make_trainer(lr=1e-3, probes=(), norm="batch", seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((64, 4))
    y = x @ rng.standard_normal((4, 4)).T

    def batch_fn(step):
        idx = np.random.default_rng([seed, step]).choice(64, size=16, replace=False)
        return x[idx], y[idx]

    net = models.dln(4, 6, in_dim=4, out_dim=4, norm=norm, seed=seed)
    return train.Trainer(net, optim.SGD(lr=lr), batch_fn, list(probes), seed=seed), batch_fn


def test_probes_run_when_due_on_the_step_batch_before_the_update():
    probe = paper_probes.LandscapeProbe(name="landscape", every=3, start=1, preset="dln")
    trainer, batch_fn = make_trainer(probes=[probe])
    trainer.run(8)
    arrays = trainer.probe_arrays()
    assert arrays["landscape/steps"].tolist() == [1, 4, 7]
    assert arrays["landscape/losses"].shape == (3, 5)
    # The probe at step 4 saw w_4 (before step 4's update) on step 4's batch: a twin stopped there agrees.
    twin, _ = make_trainer()
    twin.run(4)
    expected = probe_gradient_direction(twin.net, *batch_fn(4), probe._etas)
    np.testing.assert_array_equal(arrays["landscape/losses"][1], expected.losses)
    np.testing.assert_array_equal(arrays["landscape/grad_distances"][1], expected.grad_distances)
    assert arrays["landscape/effective_beta"][1] == expected.effective_beta


def test_probes_do_not_change_the_training_trajectory():
    probes = [paper_probes.LandscapeProbe(name="landscape", every=2, preset="dln"),
              paper_probes.LandscapeProbe(name="random", every=3, preset="dln", direction="random"),
              paper_probes.ICSProbe(name="ics", every=2),
              paper_probes.DistributionProbe(name="distributions", every=2, layers=["norms.1"], units=2)]
    with_probes, _ = make_trainer(probes=probes)
    plain, _ = make_trainer()
    with_probes.run(10)
    plain.run(10)
    np.testing.assert_array_equal(with_probes.net.params, plain.net.params)
    assert [r["loss"] for r in with_probes.metrics] == [r["loss"] for r in plain.metrics]
    assert with_probes.probe_arrays()["ics/l2"].shape == (5, 4)
    assert with_probes.probe_arrays()["random/losses"].shape == (4, 5)


def test_state_dict_round_trip_continues_identically():
    probes = [paper_probes.LandscapeProbe(name="landscape", every=2, preset="dln")]
    a, _ = make_trainer(probes=probes, norm="noisy_batch")
    a.run(5)
    state = a.state_dict()
    b, _ = make_trainer(probes=[paper_probes.LandscapeProbe(name="landscape", every=2, preset="dln")],
                        norm="noisy_batch", seed=0)
    b.load_state_dict(state)
    b.metrics = list(a.metrics)
    a.run(12)
    b.run(12)
    np.testing.assert_array_equal(a.net.params, b.net.params)
    assert [r["loss"] for r in a.metrics] == [r["loss"] for r in b.metrics]
    for key, value in a.probe_arrays().items():
        np.testing.assert_array_equal(value, b.probe_arrays()[key], err_msg=key)


def test_divergence_is_recorded_and_stops_the_run():
    trainer, _ = make_trainer(lr=10.0, norm=None)
    trainer.run(200)
    assert trainer.diverged
    assert trainer.metrics[-1]["diverged"] is True
    assert trainer.step < 200
    assert not np.isfinite(trainer.metrics[-1]["loss"]) or not np.isfinite(trainer.net.grads).all()


def test_duplicate_probe_names_are_rejected():
    with pytest.raises(ValueError, match="duplicate probe names"):
        make_trainer(probes=[paper_probes.ICSProbe(name="ics", every=1), paper_probes.ICSProbe(name="ics", every=2)])


@pytest.mark.parametrize("mode", ["probe", "eval"])
def test_hessian_probe_records_top_eigenvalues_in_its_mode(mode):
    from smoothnorm.measure.hessian import hessian_top_eigenvalues

    probe = paper_probes.HessianProbe(name="hessian", every=2, start=2, k=2, mode=mode)
    trainer, batch_fn = make_trainer(probes=[probe])
    trainer.run(3)
    recorded = trainer.probe_arrays()["hessian/top_eigenvalues"]
    assert recorded.shape == (1, 2) and probe.meta() == {"k": 2, "mode": mode}
    twin, _ = make_trainer()
    twin.run(2)
    twin.net.loss_and_grad(*batch_fn(2), mode="train")  # probes run after the step's gradient (running stats)
    expected = hessian_top_eigenvalues(twin.net, *batch_fn(2), k=2, mode=mode)
    np.testing.assert_allclose(recorded[0], expected, rtol=1e-9)
    other = hessian_top_eigenvalues(twin.net, *batch_fn(2), k=2, mode="eval" if mode == "probe" else "probe")
    assert not np.allclose(recorded[0], other, rtol=1e-3)  # the mode matters for a BN network
