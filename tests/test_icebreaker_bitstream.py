"""The iCEBreaker bitstream, built the way a user builds it (``cnnacc build --board icebreaker``): the whole board
(PLL, UART, serial bridge, the accelerator of ICEBREAKER_CONFIG) through YoWASP yosys and nextpnr-ice40, with its
resource and timing report checked against the part and the issue's targets (16 int8 MACs a cycle at >= 40 MHz).

A few minutes on two cores: the one place-and-route in ``make test``; the ULX3S build is in ``make bench``."""

import re

from cnnacc import cli
from cnnacc.boards.build import BOARDS, board_config, parse_nextpnr_log

# The UP5K's resources (nextpnr-ice40 --up5k) and the targets.
UP5K = {"ICESTORM_LC": 5280, "ICESTORM_RAM": 30, "ICESTORM_DSP": 8}
TARGET_MACS, TARGET_MHZ = 16, 40.0


def test_icebreaker_bitstream_fits_and_meets_timing(tmp_path, capsys):
    code = cli.main(["build", "--board", "icebreaker", "--out-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    print(out, err)
    assert code == 0, f"cnnacc build failed: {err.strip()}"

    config = board_config("icebreaker")
    assert config.pes >= TARGET_MACS

    # The bitstream: an iCE40 configuration image (sync word 7EAA997E near its start) of the UP5K's size.
    image = (tmp_path / "icebreaker" / "cnnacc_icebreaker.bin").read_bytes()
    assert b"\x7e\xaa\x99\x7e" in image[:64]
    assert len(image) > 100_000

    # nextpnr's own report: every resource within the part, all 8 DSPs used (16 products), the system clock
    # at the board's frequency and at least the target Fmax.
    resources, clocks = parse_nextpnr_log((tmp_path / "icebreaker" / "cnnacc_icebreaker.tim").read_text())
    for cell, total in UP5K.items():
        used, available = resources[cell]
        assert available == total and used <= available, (cell, used, available)
    assert resources["ICESTORM_DSP"][0] == 8
    (fmax, target), = [(f, t) for clock, f, t in clocks]
    assert abs(target - BOARDS["icebreaker"].f_sys / 1e6) < 0.5
    assert fmax >= target >= TARGET_MHZ

    # What the command printed agrees with the logs: the summary line of the clock and the flash command.
    shown = re.search(r"Fmax ([\d.]+) MHz against the ([\d.]+) MHz clock: timing met", out)
    assert shown and abs(float(shown.group(1)) - fmax) < 0.05
    assert "flash with: iceprog " in out
