"""The iCEBreaker instance (``ICEBREAKER_CONFIG``: target ice40, SB_MAC16 array on yosys's cells_sim.v, one serial
requantizer lane, parameters one lane a memory row) as a whole accelerator in RTL: LeNet-5 on a digit, bit for
bit against the golden model, every step's RUN cycles equal to the compiler's cycle model."""

from cnnacc.boards.configs import ICEBREAKER_CONFIG


def test_lenet5_on_the_icebreaker_instance_bit_exact_and_cycle_exact():
    from test_accelerator import _check_lenet5
    program = _check_lenet5(ICEBREAKER_CONFIG, 1)
    assert program.config.target == "ice40"
    assert any(len(step.tiles) > 1 for step in program.steps)


def test_lenet5_with_block_ram_output_registers_starting_at_garbage(monkeypatch):
    """A board build drops the initial value of the registers after block RAM read ports (boards/build.py
    ``INIT_SCRIPT``), so on the board they start at whatever the RAM's output latch holds. Started at a nonzero
    pattern here instead of 0, LeNet-5 is still bit-exact with the same cycles: nothing reads them before
    their first read."""
    from amaranth.hdl import Shape, ShapeCastable, Signal

    from cnnacc.host import rtl_backend
    from cnnacc.hw import conv_engine, memory_map

    made = []

    def garbage_read(m, port, en, name):
        shape = port.data.shape()
        width = Shape.cast(shape).width
        raw = Signal(width, name=name, reset_less=True, init=int("a5" * (width // 8 + 1), 16) % (1 << width),
                     attrs={memory_map.BRAM_OUTPUT_ATTR: 1})
        with m.If(en):
            m.d.sync += raw.eq(port.data)
        made.append(name)
        if isinstance(shape, ShapeCastable):
            return shape(raw)
        return raw.as_signed() if shape.signed else raw

    monkeypatch.setattr(memory_map, "registered_read", garbage_read)
    monkeypatch.setattr(conv_engine, "registered_read", garbage_read)
    # The cached Verilog is keyed by the sources, which the patch leaves alone: elaborate afresh.
    monkeypatch.setattr(rtl_backend, "accelerator_verilog",
                        lambda config: rtl_backend.verilog_of(rtl_backend.Accelerator(config), rtl_backend.TOPLEVEL))
    from test_accelerator import _check_lenet5
    _check_lenet5(ICEBREAKER_CONFIG, 1)
    # Every block RAM read of the instance went through the patch: the conv engine's banks, weights and
    # parameters, and the memory map's engine and host reads.
    assert {"act_read_0", "weight_read", "param_read", "act_a_engine_data", "output_host_data"} <= set(made), made
