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


def _cmd_demo(args):
    from .host.gemm import demo
    return demo(seed=args.seed)


def _build_parser():
    parser = _Parser(prog="cnnacc", description="int8 CNN inference accelerator: tools and runtime.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    p = commands.add_parser("doctor", help="check that every tool the project uses is installed and works")
    p.set_defaults(func=_cmd_doctor)

    p = commands.add_parser("demo", help="the main job: run the accelerator in RTL simulation and check it")
    p.add_argument("--seed", type=int, default=2026, help="seed of the random operands (default %(default)s)")
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
