"""The iCEBreaker instance (``ICEBREAKER_CONFIG``: target ice40, SB_MAC16 array on yosys's cells_sim.v, one serial
requantizer lane, parameters one lane a memory row) as a whole accelerator in RTL: LeNet-5 on a digit, bit for
bit against the golden model, every step's RUN cycles equal to the compiler's cycle model."""

from cnnacc.boards.configs import ICEBREAKER_CONFIG


def test_lenet5_on_the_icebreaker_instance_bit_exact_and_cycle_exact():
    from test_accelerator import _check_lenet5
    program = _check_lenet5(ICEBREAKER_CONFIG, 1)
    assert program.config.target == "ice40"
    assert any(len(step.tiles) > 1 for step in program.steps)
