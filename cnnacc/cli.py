"""The ``cnnacc`` command line.

Every failure a user can cause (unknown command, missing file, bad shape, failing tool) ends in one line on
stderr, ``cnnacc: error: ...``, and a non-zero exit status; tracebacks are for bugs.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

__all__ = ["main", "CliError"]


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise CliError(message)


def _cmd_doctor(args):
    from . import doctor
    return doctor.run()


def _load_matrix(path, what):
    path = Path(path)
    if not path.is_file():
        raise CliError(f"{what} file {str(path)!r} does not exist")
    try:
        matrix = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise CliError(f"{what} file {str(path)!r} is not a .npy array ({exc})") from None
    if matrix.ndim != 2:
        raise CliError(f"{what} file {str(path)!r} holds a {matrix.ndim}-D array; a 2-D matrix is needed")
    if not np.issubdtype(matrix.dtype, np.integer) or matrix.size and (matrix.min() < -128 or matrix.max() > 127):
        raise CliError(f"{what} file {str(path)!r} must hold integers from -128 to 127 (int8)")
    return matrix.astype(np.int8)


def _cmd_gemm(args):
    from .host.gemm import run_gemm
    a = _load_matrix(args.a, "A")
    b = _load_matrix(args.b, "B")
    if a.shape[1] != b.shape[0]:
        raise CliError(f"A is {a.shape[0]}x{a.shape[1]} and B is {b.shape[0]}x{b.shape[1]}: "
                       f"A's columns must equal B's rows")
    result = run_gemm(a, b, backend=args.backend)
    if args.out:
        np.save(args.out, result.c)
    else:
        np.set_printoptions(linewidth=120)
        print(result.c)
    print(result.summary())
    return 0 if result.matches_golden else 1


def _cmd_inspect(args):
    from .host.graph import GraphError
    from .host.model_file import graph_summary, load_graph
    try:
        graph = load_graph(args.model, calibration=args.calibration)
    except (GraphError, FileNotFoundError) as exc:
        raise CliError(str(exc).splitlines()[0]) from None
    rows = graph_summary(graph)
    spec = graph.input
    print(f"{graph.name}: input {list(spec.shape)} int8 (scale {spec.scale:.6g}, zero point {spec.zero_point}), "
          f"{len(rows)} layers")
    header = ("layer", "kind", "input", "output", "MACs", "params")
    table = [header] + [(n, k, "x".join(map(str, i)), "x".join(map(str, o)), f"{m:,}", f"{p:,}")
                        for n, k, i, o, m, p in rows]
    widths = [max(len(str(r[c])) for r in table) for c in range(len(header))]
    for r in table:
        print("  " + "  ".join(str(v).ljust(w) if c < 4 else str(v).rjust(w)
                               for c, (v, w) in enumerate(zip(r, widths))))
    print(f"total: {sum(r[4] for r in rows):,} MACs, {sum(r[5] for r in rows):,} parameters")
    return 0


# Configuration fields a user may override on compile/run/report (the accelerator the program is for).
_CONFIG_OPTIONS = ("rows", "cols", "lanes", "max_kernel", "max_width", "pool_kernel", "conv_act_depth",
                   "conv_weight_depth", "conv_param_depth", "vector_depth")


def _add_config_options(p):
    group = p.add_argument_group("accelerator configuration (default: the standard build)")
    for name in _CONFIG_OPTIONS:
        group.add_argument("--" + name.replace("_", "-"), dest=name, type=int, metavar="N")


def _config(args):
    """The standard configuration, or the one of ``--board``, with the options' changes."""
    from dataclasses import replace
    from .config import DEFAULT_CONFIG
    base = DEFAULT_CONFIG
    if getattr(args, "board", None):
        from .boards.build import board_config
        base = board_config(args.board)
    changes = {n: getattr(args, n) for n in _CONFIG_OPTIONS if getattr(args, n, None) is not None}
    try:
        return replace(base, **changes)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _program(args, config):
    """The program of ``args.model``: a saved program (.json) as it is, or a model compiled for ``config``."""
    from .host.compiler import compile_graph
    from .host.graph import GraphError
    from .host.model_file import BUNDLED, load_graph
    from .host.program import Program, ProgramError
    source = str(args.model)
    try:
        if source.endswith(".json"):
            if not Path(source).is_file():
                raise CliError(f"program file {source!r} does not exist")
            return Program.load(source)
        calibration = getattr(args, "calibration", None)
        graph = load_graph(source, calibration=calibration)
        if source not in BUNDLED:
            source = str(Path(source).resolve())
        program = compile_graph(graph, config, source)
        program.calibration = str(Path(calibration).resolve()) if calibration else ""
        return program
    except (GraphError, ProgramError, FileNotFoundError) as exc:
        raise CliError(str(exc).splitlines()[0]) from None


def _cmd_compile(args):
    from .host.report import format_table, step_rows
    config = _config(args)
    program = _program(args, config)
    rows = step_rows(program)
    print(f"{program.graph.name}: {len(program.steps)} steps, {sum(len(s.tiles) for s in program.steps)} tiles "
          f"for {config!r}")
    print(format_table(rows))
    _print_totals(program, rows)
    out = args.output or f"{program.graph.name}.program.json"
    program.save(out)
    print(f"program written to {out}")
    return 0


def _print_totals(program, rows, cycles=None):
    report = program.report
    cycles = sum(r["cycles"] for r in rows) if cycles is None else cycles
    macs = report["total_macs"]
    print(f"total: {cycles:,} cycles per image, {macs:,} MACs, PE utilization {100 * macs / (program.config.pes * cycles):.1f}% "
          f"of {program.config.pes} PEs; traffic {report['bytes_in'] + report['bytes_out']:,} bytes "
          f"(minimum {report['min_in'] + report['min_out']:,}); activation arena {report['memory']['arena_bytes']:,} "
          f"bytes, weights {report['weight_bytes']:,} bytes")


def _images(args, program):
    """``(images, labels or None)``: ``--images``/``--labels`` files, or the bundled test digits."""
    from .host.data import load_digits
    shape = tuple(program.graph.input.shape)
    if args.images:
        images = _load_array(args.images, "images")
        labels = _load_array(args.labels, "labels") if args.labels else None
    else:
        if shape != (32, 32, 1):
            raise CliError(f"model {program.graph.name!r} takes images of shape {list(shape)}; the bundled digits "
                           f"are [32, 32, 1]: give --images FILE.npy")
        images, labels = load_digits("test", dtype="int8")
    if images.ndim == len(shape):
        images = images[None]
    if args.count is not None:
        if args.count < 1:
            raise CliError(f"--count must be at least 1, not {args.count}")
        images = images[:args.count]
        labels = None if labels is None else labels[:args.count]
    if labels is not None and len(labels) != len(images):
        raise CliError(f"{len(labels)} labels for {len(images)} images")
    return images, labels


def _load_array(path, what):
    path = Path(path)
    if not path.is_file():
        raise CliError(f"{what} file {str(path)!r} does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise CliError(f"{what} file {str(path)!r} is not a .npy array ({exc})") from None


def _run(args, program, config, images):
    """Run ``images`` in batches (a progress bar when there are several) and merge the results."""
    from .host.program import ProgramError
    from .host.runtime import Runtime, check_images
    try:
        images = check_images(program, images)
        # One simulation per batch on the RTL: its start-up is paid once per batch, and the bar still moves.
        # A board runs everything in one batch: its weights then cross the serial line once.
        batch = {"golden": 64, "rtl": 10}.get(args.backend, max(len(images), 1))
        chunks = [images[i:i + batch] for i in range(0, len(images), batch)]
        # A single batch shows its progress step by step instead (a 224x224 network takes seconds).
        board = {}
        if args.backend == "board":
            board = {"port": args.port, "baud": args.baud, "board": args.board}
        elif args.port or args.baud:
            raise CliError("--port and --baud are for --backend board")
        runtime = Runtime(program, args.backend, config=config, progress=len(chunks) == 1, **board)
    except ProgramError as exc:
        raise CliError(str(exc).splitlines()[0]) from None
    if len(chunks) > 1:
        from tqdm import tqdm
        chunks = tqdm(chunks, desc=f"{program.graph.name} ({args.backend})", unit="batch", leave=False,
                      file=sys.stderr)
    results = []
    try:
        with runtime:
            for chunk in chunks:
                results.append(runtime.run(chunk))
    except ProgramError as exc:
        raise CliError(str(exc).splitlines()[0]) from None
    first = results[0]
    first.outputs = np.concatenate([r.outputs for r in results])
    first.per_image = [c for r in results for c in r.per_image]
    return first


def _cmd_run(args):
    config = _config(args)
    program = _program(args, config)
    images, labels = _images(args, program)
    result = _run(args, program, config, images)
    predictions = result.outputs.reshape(len(result.outputs), -1).argmax(axis=1)
    shown = " ".join(map(str, predictions[:20])) + (" ..." if len(predictions) > 20 else "")
    print(f"{program.graph.name} on {args.backend}: {len(predictions)} image{'s' if len(predictions) > 1 else ''}")
    print(f"predictions: {shown}")
    if labels is not None:
        correct = int((predictions == np.asarray(labels)).sum())
        print(f"accuracy: {correct}/{len(predictions)} = {100 * correct / len(predictions):.1f}%")
    cycles = result.total_cycles
    macs = program.report["total_macs"]
    print(f"cycles: {cycles:,} per image ({'measured' if args.backend != 'golden' else 'cycle model'}), "
          f"PE utilization {100 * macs / (config.pes * cycles):.1f}% of {config.pes} PEs")
    if args.backend != "golden":
        model = sum(result.model_cycles.values())
        print(f"cycle model: {model:,} per image, error {100 * (model - cycles) / cycles:+.2f}%")
    kinds = {}
    for step in program.steps:
        c = result.cycles[step.name]
        work, total = kinds.get(step.kind, (0.0, 0))
        kinds[step.kind] = (work + result.utilization[step.name] * c, total + c)
    # Weighted by cycles: the engine's useful work over its capacity during all its steps.
    print("utilization by engine: " + ", ".join(f"{k} {100 * w / c:.1f}% over {c:,} cycles"
                                                 for k, (w, c) in kinds.items() if c))
    return 0


def _cmd_report(args):
    from .host.report import format_kinds, format_table, plot, step_rows
    config = _config(args)
    program = _program(args, config)
    result = None
    if args.backend != "golden":
        images, _ = _images(args, program)
        result = _run(args, program, config, images[:1])
    rows = step_rows(program, result)
    print(format_table(rows, measured=result is not None))
    _print_totals(program, rows)
    print(format_kinds(rows, config))
    out = args.plot or f"{program.graph.name}_report.png"
    try:
        plot(rows, out, title=f"{program.graph.name}: cycles and utilization per step ({args.backend})")
    except RuntimeError as exc:
        raise CliError(str(exc)) from None
    print(f"plot written to {out}")
    return 0


def _cmd_build(args):
    from .boards.build import BuildError, build
    try:
        report = build(args.board, out_dir=args.out_dir, seed=args.seed, time_limit=args.time_limit,
                       router=args.router)
    except BuildError as exc:
        raise CliError(str(exc).splitlines()[0]) from None
    print(report.summary())
    if not report.timing_met:
        raise CliError(f"{args.board}: timing not met: Fmax {report.fmax_mhz:.1f} MHz is below the "
                       f"{report.target_mhz:.1f} MHz clock (see {report.log}; every failing path: "
                       f"python -m cnnacc.boards.routed {report.log.parent})")
    print(f"flash with: {report.flash_command()}")
    return 0


def _cmd_demo(args):
    from .host.demo import lenet5_demo
    try:
        return lenet5_demo(count=args.count)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _build_parser():
    parser = _Parser(prog="cnnacc", description="int8 CNN inference accelerator: tools and runtime.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    p = commands.add_parser("doctor", help="check that every tool the project uses is installed and works")
    p.set_defaults(func=_cmd_doctor)

    p = commands.add_parser("demo", help="the main job: LeNet-5 on bundled digits through the RTL simulation, "
                                         "checked against the golden model")
    p.add_argument("--count", type=int, default=10, help="digits to run (default %(default)s)")
    p.set_defaults(func=_cmd_demo)

    p = commands.add_parser("inspect", help="import a model (.tflite, .onnx or a bundled name) and list its layers")
    p.add_argument("model", help="a .tflite or .onnx file, or one of: lenet5, mobilenet_v1_digits, mobilenet_v1, "
                                 "mobilenet_v2")
    p.add_argument("--calibration", help="for a float .onnx model: a .npy file of NCHW float calibration images")
    p.set_defaults(func=_cmd_inspect)

    p = commands.add_parser("gemm", help="multiply two int8 matrices (.npy) on the MAC array and check the result")
    p.add_argument("a", help="A, an M x K int8 matrix (.npy)")
    p.add_argument("b", help="B, a K x N int8 matrix (.npy)")
    p.add_argument("--backend", choices=["golden", "amaranth", "verilator", "icarus"], default="verilator")
    p.add_argument("--out", help="write C (int32) to this .npy file instead of printing it")
    p.set_defaults(func=_cmd_gemm)

    p = commands.add_parser("build", help="build a board's bitstream (YoWASP yosys/nextpnr): resources and Fmax")
    p.add_argument("--board", choices=["icebreaker", "ulx3s"], required=True)
    p.add_argument("--out-dir", default="build", help="build directory (default %(default)s/BOARD)")
    p.add_argument("--seed", type=int, default=None,
                   help="nextpnr placement seed (default: the board's, boards/build.py BOARDS)")
    p.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                   help="stop the toolchain after this long, saying where it was (default: the board's, "
                        "1 hour for the iCEBreaker and 2 for the ULX3S; 0: no limit)")
    p.add_argument("--router", choices=["router1", "router2"], default="router1",
                   help="nextpnr's router (default %(default)s; router2 is faster and less timing-driven, for an "
                        "analysis of a placement router1 is slow to finish)")
    p.set_defaults(func=_cmd_build)

    models_help = ("a .tflite or .onnx file, a bundled name (lenet5, mobilenet_v1_digits, mobilenet_v1, "
                   "mobilenet_v2), or a program saved by compile (.json)")
    p = commands.add_parser("compile", help="compile a model for the accelerator: program (.json) and report")
    p.add_argument("model", help=models_help)
    p.add_argument("-o", "--output", help="program file to write (default: NAME.program.json)")
    p.add_argument("--calibration", help="for a float .onnx model: a .npy file of NCHW float calibration images")
    _add_config_options(p)
    p.set_defaults(func=_cmd_compile)

    for name, what in (("run", "run a model on images and print predictions, accuracy, cycles, utilization"),
                       ("report", "per-step table of cycles, utilization and traffic, and a PNG plot")):
        p = commands.add_parser(name, help=what)
        p.add_argument("model", nargs="?", default="lenet5", help=models_help + " (default %(default)s)")
        p.add_argument("--backend", choices=["golden", "rtl", "board"], default="golden")
        p.add_argument("--board", choices=["icebreaker", "ulx3s"],
                       help="compile for this board's accelerator (and, with --backend board, use its baud rate)")
        p.add_argument("--port", help="--backend board: the board's serial port, e.g. /dev/ttyUSB1")
        p.add_argument("--baud", type=int, help="--backend board: baud rate (default: the board's)")
        p.add_argument("--images", help="int8 images [N, H, W, C] (.npy); default: the bundled test digits")
        p.add_argument("--labels", help="labels [N] (.npy) of --images, for the accuracy")
        p.add_argument("--count", type=int, help="run only the first N images")
        p.add_argument("--calibration", help="for a float .onnx model: a .npy file of NCHW calibration images")
        if name == "report":
            p.add_argument("--plot", help="PNG file to write (default: NAME_report.png)")
        _add_config_options(p)
        p.set_defaults(func=_cmd_run if name == "run" else _cmd_report)
    return parser


def main(argv=None):
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        return args.func(args)
    except CliError as exc:
        print(f"cnnacc: error: {exc}", file=sys.stderr)
        return 2 if "argument" in str(exc) or "invalid choice" in str(exc) else 1
    except KeyboardInterrupt:
        print("cnnacc: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from .sim.runner import SimulationError
        if isinstance(exc, SimulationError):
            first, *_ = str(exc).splitlines()
            print(f"cnnacc: error: {first}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
