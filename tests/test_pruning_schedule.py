import pytest

from ltap_hf.pruning.schedule import cubic_density, stage_steps


@pytest.mark.parametrize("num_stages", [2, 3, 7, 61])
def test_cubic_density_starts_dense_ends_on_target_and_never_grows(num_stages):
    densities = [cubic_density(t, num_stages, 0.3) for t in range(num_stages)]
    assert densities[0] == 1.0
    assert densities[-1] == 0.3
    assert all(later < earlier for earlier, later in zip(densities, densities[1:]))


def test_cubic_density_values_by_hand():
    # T = 2, t = 1: 0.3 + 0.7 * (1/2)^3.
    assert cubic_density(1, 3, 0.3) == pytest.approx(0.3875)
    # T = 4, t = 1: 0.5 + 0.5 * (3/4)^3; the cubic prunes fastest early on.
    assert cubic_density(1, 5, 0.5) == pytest.approx(0.5 + 0.5 * 27 / 64)


def test_single_stage_goes_straight_to_target():
    assert cubic_density(0, 1, 0.3) == 0.3


@pytest.mark.parametrize(
    "args, message",
    [
        ((0, 0, 0.3), "num_stages"),
        ((3, 3, 0.3), "stage"),
        ((-1, 3, 0.3), "stage"),
        ((0, 3, 0.0), "target_density"),
        ((0, 3, 1.5), "target_density"),
    ],
)
def test_cubic_density_rejects_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        cubic_density(*args)


def test_stage_steps_include_start_and_end():
    assert stage_steps(100, 160, 10) == [100, 110, 120, 130, 140, 150, 160]
    # A last gap shorter than the interval still ends on end_step.
    assert stage_steps(0, 25, 10) == [0, 10, 20, 25]
    assert stage_steps(5, 5, 3) == [5]


@pytest.mark.parametrize(
    "args, message", [((-1, 10, 1), "start_step"), ((10, 5, 1), "end_step"), ((0, 10, 0), "interval_steps")]
)
def test_stage_steps_rejects_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        stage_steps(*args)
