"""The demo's run-time estimate: stage seconds from the cost model and a host's probe, by hand."""

import pytest

from mim_nnunet.demo.settings import DEMO_COSTS, DEMO_SETTINGS, DemoCosts, describe_estimate, estimate_demo

COSTS = DemoCosts(calibration="test numbers", provisional=False, capability_factor={"AVX512": 1.0, "AVX2": 2.0},
                  reference_gflops={"AVX512": 100.0, "AVX2": 50.0}, data_seconds=10, pretrain_seconds=20, pretrain_step_gflop=50, planning_seconds=30,
                  finetune_seconds=5, finetune_iteration_gflop=100, validation_seconds=40, prediction_seconds=7)


def test_full_setting_on_three_hosts_by_hand():
    # full: 1000 steps of one 64^3 crop (S = 32, batch 1); 2 labels x 2 seeds x (MiM, scratch) = 8
    # fine-tunings of 12 epochs x (10 training + 1 validation iteration at a third) = 124 iterations, no
    # final validation; 2 at a time -> 4 groups of fine-tunings and of predictions
    fast = dict(estimate_demo("full", 100.0, "AVX512", 2, COSTS))
    assert list(fast) == ["data", "pre-training", "planning and preprocessing", "fine-tuning", "prediction"]
    assert fast["data"] == 10 and fast["planning and preprocessing"] == 30
    assert fast["pre-training"] == pytest.approx(20 + 1000 * 50 / 100)                 # 520 s
    assert fast["fine-tuning"] == pytest.approx(4 * 5 + 8 * 124 * 100 / 100)         # 1012 s
    assert fast["prediction"] == pytest.approx(4 * 7)
    # the calibration host on AVX2 kernels (its probe there: 50): the work takes 4x as long (factor 2, half
    # the probe), the start-up seconds stay
    slow = dict(estimate_demo("full", 50.0, "avx2", 2, COSTS))
    assert slow["data"] == 10
    assert slow["pre-training"] == pytest.approx(20 + 1000 * 50 * 2 / 50)              # 2020 s
    assert slow["fine-tuning"] == pytest.approx(4 * 5 + 8 * 124 * 100 * 2 / 50)      # 3988 s
    # an AVX2 host with half that probe: start-ups take twice as long too, the work 8x
    slower = dict(estimate_demo("full", 25.0, "AVX2", 2, COSTS))
    assert slower["data"] == 20 and slower["planning and preprocessing"] == 60 and slower["prediction"] == 4 * 14
    assert slower["pre-training"] == pytest.approx(2 * 20 + 1000 * 50 * 2 / 25)      # 4040 s
    # one at a time (one core): 8 groups of start-up, the same work
    single = dict(estimate_demo("full", 100.0, "AVX512", 1, COSTS))
    assert single["fine-tuning"] == pytest.approx(8 * 5 + 8 * 124 * 100 / 100)
    assert single["prediction"] == pytest.approx(8 * 7)
    # a capability the model has no factor for gets its largest (the slowest kernels it knows) and the
    # smallest reference probe
    assert dict(estimate_demo("full", 50.0, "DEFAULT", 2, COSTS)) == slow


def test_default_setting_is_the_full_one_shortened_by_hand():
    # 250 steps; one seed on both labelled halves: one pair of the same 124-iteration fine-tunings
    full, default = DEMO_SETTINGS["full"], DEMO_SETTINGS["default"]
    assert default["pretrain"] == {**full["pretrain"], "steps": 250, "val_every": 50}
    assert default["finetune"] == {**full["finetune"], "seeds": [0], "labels": ["all"]}
    stages = dict(estimate_demo("default", 100.0, "AVX512", 2, COSTS))
    assert stages["pre-training"] == pytest.approx(20 + 250 * 50 / 100)
    assert stages["fine-tuning"] == pytest.approx(5 + 2 * 124 * 100 / 100)
    assert stages["prediction"] == pytest.approx(7)


def test_quick_and_long_settings_by_hand():
    quick = dict(estimate_demo("quick", 100.0, "AVX512", 2, COSTS))
    # 4 steps; one pair of 1-epoch fine-tunings (2 + 1/3 iterations each) without nnU-Net's final validation
    assert quick["pre-training"] == pytest.approx(20 + 4 * 50 / 100)
    assert quick["fine-tuning"] == pytest.approx(5 + 2 * (2 + 1 / 3) * 100 / 100)
    assert quick["prediction"] == pytest.approx(7)
    long = dict(estimate_demo("long", 100.0, "AVX512", 2, COSTS))
    # 4000 steps of batch 2; 2 labels x 3 seeds x 2 = 12 fine-tunings of 100 x (25 + 5/3) iterations
    assert DEMO_SETTINGS["long"]["pretrain"]["batch"] == 2
    assert long["pre-training"] == pytest.approx(20 + 4000 * 2 * 50 / 100)
    # with nnU-Net's final validation (40 s each, whatever the probe)
    assert long["fine-tuning"] == pytest.approx(6 * 5 + 12 * 40 + 12 * 100 * (25 + 5 / 3) * 100 / 100)


def test_the_estimate_says_when_it_is_over_twenty_minutes():
    under = [("data", 100.0), ("pre-training", 500.0), ("fine-tuning", 599.0)]
    lines = describe_estimate("default", under, costs=COSTS)
    assert lines == ["estimate for this host: about 20 min (data 1.7, pre-training 8.3, fine-tuning 10.0 min)"]
    over = [("data", 100.0), ("pre-training", 500.0), ("fine-tuning", 601.0)]
    lines = describe_estimate("default", over, costs=COSTS)
    assert len(lines) == 2 and lines[1] == ("WARNING: the estimate, 20 min, is over 20 minutes on this host "
                                            "(`-setting quick` is a smoke run of a few minutes)")
    assert describe_estimate("full", over, costs=COSTS)[1].endswith(
        "over 20 minutes on this host (`-setting default` is the shorter demo, `-setting quick` a smoke run)")
    provisional = describe_estimate("quick", over, costs=DEMO_COSTS)
    assert provisional[0].endswith("min; provisional calibration)") == DEMO_COSTS.provisional
    assert provisional[1].endswith("is over 20 minutes on this host")


def test_a_probe_that_is_not_positive_is_refused():
    for gflops in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="probe's GFLOP/s must be positive"):
            estimate_demo("default", gflops, "AVX2", 2, COSTS)
