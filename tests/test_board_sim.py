"""The board backend against the simulated board: UART pins, serial bridge and accelerator in cocotb + Verilator,
driven byte for byte by the same BoardBackend (SerialLink + AcceleratorDriver) that drives a real board.

LeNet-5 on a real digit exact through a line that flips bits and drops bytes both ways, and a hopeless line ending
in one clear error in bounded (simulated and wall) time.
"""

from dataclasses import replace

import numpy as np
import pytest

from cnnacc.boards.configs import ICEBREAKER_CONFIG
from cnnacc.host import models
from cnnacc.host.board_backend import SimulatedBoard
from cnnacc.host.compiler import compile_graph
from cnnacc.host.data import load_digits
from cnnacc.host.runtime import Runtime

#: The iCEBreaker's accelerator with plain multipliers: the same numbers, no vendor models in Verilator.
SIM_CONFIG = replace(ICEBREAKER_CONFIG, target="generic")


@pytest.fixture(scope="module")
def lenet():
    program = compile_graph(models.lenet5(), SIM_CONFIG, "lenet5")
    images, labels = load_digits("test", dtype="int8")
    return program, images, labels


def _check_exact(lenet, phase, seed):
    program, images, _ = lenet
    image = images[3:4]                 # a real held-out digit (a 0)
    golden = Runtime(program, "golden").run(image).outputs
    (result,) = SimulatedBoard().run(program, image, phases=[phase])
    print(f"seed {seed}: link {result['link']}, faults {result['faults']} (to the board, from it, framing), "
          f"{result['wall']:.1f} s wall, {result['sim_seconds'] * 1e3:.2f} ms simulated")
    assert "error" not in result, f"seed {seed}: {result.get('error')}"
    assert np.array_equal(result["outputs"], golden), f"seed {seed}"
    # The board's own cycle counts come back with the outputs.
    assert result["cycles"].shape == (1, len(program.steps)) and (result["cycles"] > 0).all()
    return result


def test_lenet5_through_a_noisy_line_still_exact(lenet):
    """LeNet-5 on a real digit through the UART pins, bits flipped and bytes dropped both ways (about 1 byte in
    10,000 towards the board: the ~90 KB of weights and maps, each fault costing a ~1 KB frame again; 1 in 1,250
    from it: the answers, maps read back). The logits
    equal the golden backend's; lost answers to START and WAIT are replayed by the bridge, not run twice; and
    every retry is paid for by a fault (a clean stretch of line needs none).

    One test, not a clean run and a noisy one: the ~70 KB each run sends take ~4 million simulated cycles
    (40 a byte at the UART's minimum of 4 cycles a bit), minutes of Verilator."""
    seed = 11
    result = _check_exact(lenet, (5e-5, 5e-5, 4e-4, 4e-4, seed), seed=seed)
    to_board, from_board, framing = result["faults"]
    assert to_board > 0 and from_board > 0, f"seed {seed}: the line should have damaged bytes both ways"
    assert result["link"]["retries"] > 0 and result["link"]["naks"] > 0, f"seed {seed}: {result['link']}"
    assert result["link"]["retries"] <= to_board + from_board + framing, f"seed {seed}: {result}"


def test_hopeless_line_fails_clearly_and_in_bounded_time(lenet):
    program, images, _ = lenet
    # Only STATUS is tried: a timeout of 0.2 ms simulated (20,000 cycles) is plenty for its answer.
    board = SimulatedBoard(retries=3, timeout=2e-4)
    (result,) = board.run(program, images[:1], phases=[(0.0, 0.5, 0.0, 0.5, 5)])
    assert result["error"].startswith("board on simulated UART did not answer after 3 attempts"), result
    assert "\n" not in result["error"]
    # At most one timeout per attempt, plus the frames themselves.
    assert result["sim_seconds"] <= 3 * (board.timeout + 1e-4), result
    assert result["wall"] < 60, result      # the host's own time, the simulator's build aside
