"""Markdown tables of a pytest-benchmark JSON written by ``pytest bench/ --benchmark-json out.json``.

    python -m bench.report out.json

One table per suite (its module's docstring says what it measures), one row per benchmark, then
the roofline: the device ceilings of the run and each preset's network evaluation against them.
"""
import argparse
import ast
import json
import sys
from pathlib import Path

SUITES = ["bench_cpu_engine", "bench_sampler", "bench_network", "bench_kernels", "bench_onnx", "bench_training"]
ROOFLINE = "bench_roofline"
COLUMNS = ["name", "device", "dtype or speed", "shape", "NFE", "median ms", "ms/image", "img/s", "TFLOP/s or GB/s",
           "of floor", "peak MB", "notes"]
ROOFLINE_COLUMNS = ["preset", "path", "dtype", "shape", "GFLOP", "MB moved", "FLOP/B", "compute floor ms",
                    "bandwidth floor ms", "median ms", "of compute floor", "of bandwidth"]
REFERENCES = ["reference", "reference-dopri5"]   # bench_sampler's reference paths
LEGEND = ("Produced by `pytest bench/ --benchmark-only --benchmark-json out.json` (CPU: one thread unless "
          "`ECDP_BENCH_THREADS` says otherwise) and `python -m bench.report out.json`. Times are the median of "
          "the timed rounds; ms/image and img/s divide by the batch. TFLOP/s count the FLOPs the method needs "
          "(bench/roofline.py); `of floor` is the compute floor (those FLOPs at the matrix-product ceiling of "
          "this run) over the time, or for kernels the copy-bandwidth time of their bytes over the time.")
DESIGN_GFLOP = 288   # DESIGN.md section 2: the paper preset at 64x64 -> 256x256, per evaluation
DESIGN_ENCODER_GFLOP = 135


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", type=Path, help="the file of --benchmark-json")
    args = parser.parse_args(argv)
    data = json.loads(args.json.read_text())
    print(render(data))
    return 0


def render(data):
    """The whole markdown report of a pytest-benchmark JSON."""
    suites = {}
    for bench in data["benchmarks"]:
        suites.setdefault(Path(bench["fullname"].split("::")[0]).stem, []).append(bench)
    parts = [header(data)]
    for suite in SUITES + sorted(set(suites) - set(SUITES) - {ROOFLINE}):
        if suite in suites:
            parts.append(f"## {suite.removeprefix('bench_')}\n\n{description(suite)}\n\n"
                         f"{table(COLUMNS, [row(b) for b in suites[suite]])}")
            parts += speedups(suites[suite])
    if ROOFLINE in suites:
        parts.append(roofline(suites[ROOFLINE]))
    return "\n\n".join(parts) + "\n"


def header(data):
    machine, benchmarks = data["machine_info"], data["benchmarks"]
    models = sorted({b["extra_info"].get("model") for b in benchmarks} - {None})
    memory = "; ".join(sorted({b["extra_info"].get("memory_method") for b in benchmarks} - {None}))
    return "\n\n".join([
        "# ECDP benchmarks",
        f"Device: {machine.get('device', machine.get('processor'))}. torch {machine.get('torch', '?')}, run "
        f"{data['datetime'][:16].replace('T', ' ')} UTC. Models: {'; '.join(models)}.",
        f"{LEGEND} Peak MB: {memory}."])


def description(suite):
    """The first paragraph of a suite module's docstring, on one line."""
    source = (Path(__file__).parent / f"{suite}.py").read_text()
    return " ".join((ast.get_docstring(ast.parse(source)) or "").split("\n\n")[0].split())


def row(bench):
    info, median = bench["extra_info"], bench["stats"]["median"]
    throughput = (f"{info['tflops']:.3g} TFLOP/s" if info.get("tflops")
                  else f"{info['gbs']:.3g} GB/s" if info.get("gbs") else "")
    floor = info.get("of_compute_floor", info.get("of_bandwidth"))
    return [bench["name"], info.get("device", ""), info.get("dtype", ""), info.get("shape", ""), info.get("nfe"),
            1e3 * median, info.get("ms_per_image"), info.get("images_per_s"), throughput, percent(floor),
            info.get("peak_mb"), notes(info)]


def notes(info):
    parts = [info.get("solver") or ""]
    for key, text in (("compile_s", "compile {:.0f} s"), ("export_s", "export {:.0f} s"),
                      ("max_abs_diff", "max diff to PyTorch {:.1e}"), ("error", "error to reference {:.1e}"),
                      ("levels_from_reference", "max diff to reference {:.2f}/255")):
        if info.get(key) is not None:
            parts.append(text.format(info[key]))
    return "; ".join(p for p in parts if p)


def speedups(benchmarks):
    """[table]: ms per image of each sampler path per case, and the speedups over the references;
    [] when the suite has no such comparison."""
    cases = {}
    for bench in benchmarks:
        info = bench["extra_info"]
        if "comparison" in info:
            cases.setdefault(info["comparison"], {})[info["path"]] = info["ms_per_image"]
    if not cases:
        return []
    paths = list(dict.fromkeys(path for by_path in cases.values() for path in by_path))
    engines = [path for path in paths if not path.startswith("reference")]
    ratios = [(engine, reference) for engine in engines for reference in REFERENCES if reference in paths]
    columns = ["case"] + [f"{path} ms/image" for path in paths] + [f"{e} vs {r}" for e, r in ratios]
    rows = [[case] + [by_path.get(path) for path in paths]
            + [ratio(by_path.get(r), by_path.get(e)) for e, r in ratios] for case, by_path in cases.items()]
    return ["Speedups (ms per image of the reference over that of the engine):\n\n" + table(columns, rows)]


def ratio(slow, fast):
    return f"{slow / fast:.2f}x" if slow and fast else None


def roofline(benchmarks):
    """The ceilings, the per-preset table and the FLOP count against DESIGN.md."""
    ceilings = [b for b in benchmarks if b["extra_info"].get("ceiling")]
    evaluations = [b for b in benchmarks if b["extra_info"].get("preset")]
    lines = ["## roofline", "", description(ROOFLINE), "", "Ceilings measured in this run:", ""]
    lines += [f"- {b['extra_info']['ceiling']}: " + (f"{b['extra_info']['tflops']:.3g} TFLOP/s"
              if b["extra_info"].get("tflops") else f"{b['extra_info']['gbs']:.3g} GB/s")
              + f" ({b['extra_info']['dtype']}, {b['extra_info']['shape']}, {b['extra_info']['device']})"
              for b in ceilings]
    rows = [roofline_row(b) for b in evaluations]
    lines += ["", "MB moved: the unfused eager traffic (every op reads its inputs and writes its output once).",
              "", table(ROOFLINE_COLUMNS, rows)]
    check = flop_check(evaluations)
    return "\n".join(lines + ([""] + check if check else []))


def roofline_row(bench):
    info = bench["extra_info"]
    return [info["preset"], info["path"], info["dtype"], info["shape"], info["flops"] / 1e9, info["bytes"] / 1e6,
            info["flops"] / info["bytes"], info.get("compute_floor_ms"), info.get("bandwidth_floor_ms"),
            1e3 * bench["stats"]["median"], percent(info.get("of_compute_floor")), percent(info.get("of_bandwidth"))]


def flop_check(evaluations):
    """Lines comparing the paper preset's counted FLOPs at 64x64 -> 256x256 with DESIGN.md."""
    paper = {b["extra_info"]["path"]: b["extra_info"] for b in evaluations
             if b["extra_info"]["preset"] == "paper" and b["extra_info"]["shape"] == "1x3x256x256"}
    if "eager" not in paper:
        return []
    lines = [f"FLOP count check, paper preset at 64x64 -> 256x256: {paper['eager']['flops'] / 1e9:.1f} GFLOP per "
             f"evaluation with the conditioning recomputed (DESIGN.md: {DESIGN_GFLOP}, which projects it at HR; "
             f"the network projects it at LR)"]
    if "cached" in paper:
        lines[0] += f", {paper['cached']['flops'] / 1e9:.1f} with it computed once per solve"
    encoder = paper["eager"].get("encoder_flops")
    if encoder:
        lines[0] += (f"; encoder {encoder / 1e9:.1f} GFLOP once per image (DESIGN.md: {DESIGN_ENCODER_GFLOP}, "
                     "which counts all 23 RRDB blocks: the network stops after the last tapped one, block 22)")
    return [lines[0] + "."]


def percent(value):
    return None if value is None else f"{100 * value:.3g}%"


def table(columns, rows):
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value).replace("|", "/")


if __name__ == "__main__":
    sys.exit(main())
