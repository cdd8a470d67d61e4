"""The driver's bookkeeping against a scripted accelerator (no simulation): nothing is left in flight."""

import numpy as np
import pytest
from amaranth.lib import data

from cnnacc.config import DEFAULT_CONFIG
from cnnacc.host.compiler import compile_graph
from cnnacc.host.driver import AcceleratorDriver, run_program
from cnnacc.host.models import lenet5
from cnnacc.host.serial_link import LinkError
from cnnacc.hw.commands import Header, Opcode, Response, RunState, Status, config_id

_HEADER = data.Layout.cast(Header)
_RESPONSE = data.Layout.cast(Response)


class ScriptedAccelerator:
    """Answers every command like the accelerator would (OK, with the right number of words), without computing:
    READs return zeros. ``fail_on`` = (opcode, n): the n-th such command raises LinkError instead. ``state``
    is the RunState STATUS reports."""

    def __init__(self, fail_on=None, state=RunState.IDLE):
        self.log, self.fail_on, self.state, self.seen = [], fail_on, state, {}

    def transact(self, words):
        header = _HEADER.from_bits(words[0])
        opcode = Opcode(header.opcode)
        self.log.append(opcode)
        self.seen[opcode] = self.seen.get(opcode, 0) + 1
        if self.fail_on == (opcode, self.seen[opcode]):
            self.state_at_failure = self.state
            raise LinkError(f"{opcode.name}: the line went quiet")
        detail = 0
        extra = {Opcode.READ: lambda: [0] * header.count, Opcode.WAIT: lambda: [100], Opcode.RUN: lambda: [100],
                 Opcode.STATUS: lambda: [0, 0, config_id(DEFAULT_CONFIG)]}.get(opcode, lambda: [])()
        if opcode is Opcode.STATUS:
            detail = self.state.value
        elif opcode is Opcode.START:
            self.state = RunState.RUNNING
        elif opcode is Opcode.WAIT:
            self.state = RunState.IDLE
        response = _RESPONSE.const({"status": Status.OK, "opcode": opcode, "detail": detail}).as_bits()
        return [response] + extra


@pytest.fixture(scope="module")
def lenet():
    graph = lenet5()
    return graph, compile_graph(graph, DEFAULT_CONFIG)


def test_scripted_run_pairs_every_start_with_a_wait(lenet):
    graph, program = lenet
    accel = ScriptedAccelerator()
    run_program(AcceleratorDriver(accel, DEFAULT_CONFIG), program, np.zeros((2,) + graph.input.shape, np.int8))
    assert accel.seen[Opcode.START] == accel.seen[Opcode.WAIT] > 0
    assert accel.state is RunState.IDLE


def test_a_failure_mid_pipeline_leaves_no_run_in_flight(lenet):
    """A link failure while a tile runs: the driver still WAITs for it before the error goes up, so the next
    program's START is not answered BUSY."""
    graph, program = lenet
    accel = ScriptedAccelerator(fail_on=(Opcode.READ, 1))     # image 0's result, read while image 1 runs
    with pytest.raises(LinkError, match="READ: the line went quiet"):
        run_program(AcceleratorDriver(accel, DEFAULT_CONFIG), program, np.zeros((2,) + graph.input.shape, np.int8))
    assert accel.state_at_failure is RunState.RUNNING
    assert accel.log[-2:] == [Opcode.READ, Opcode.WAIT] and accel.state is RunState.IDLE


@pytest.mark.parametrize("state", [RunState.RUNNING, RunState.FINISHED])
def test_check_collects_a_run_left_by_an_earlier_host(state):
    accel = ScriptedAccelerator(state=state)
    AcceleratorDriver(accel, DEFAULT_CONFIG).check()
    assert accel.log == [Opcode.STATUS, Opcode.WAIT]
    accel = ScriptedAccelerator()
    AcceleratorDriver(accel, DEFAULT_CONFIG).check()
    assert accel.log == [Opcode.STATUS]
