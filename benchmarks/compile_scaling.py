"""Compile time against graph length: a chain of n Add-with-constant nodes (the issue's CPU bomb), for growing n.

    .venv/bin/python benchmarks/compile_scaling.py [--sizes 1000,5000,...] [--profile N]

Prints one row per size: source nodes, compiled nodes, compile seconds (CPU time of this process: the machine may
be shared; wall time beside it), microseconds per node and the growth exponent of the CPU time between consecutive
sizes (1.0 = linear, 2.0 = quadratic)."""
from __future__ import annotations

import argparse
import cProfile
import math
import pstats
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxlrp


def add_chain(n: int, width: int = 4) -> onnx.ModelProto:
    """x (N, width) -> n times Add of a constant -> y: n nodes and n small initializers."""
    nodes, inits, value = [], [], "x"
    for i in range(n):
        inits.append(numpy_helper.from_array(np.full(width, 0.001 * (i % 7), dtype=np.float32), f"c{i}"))
        nodes.append(helper.make_node("Add", [value, f"c{i}"], [f"a{i}"], name=f"add{i}"))
        value = f"a{i}"
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,2000,5000,10000,20000,50000,100000")
    parser.add_argument("--profile", type=int, default=0, help="profile one compile of this size instead")
    args = parser.parse_args()
    if args.profile:
        model = add_chain(args.profile)
        cProfile.runctx("onnxlrp.compile(model)", globals(), {"model": model}, "/tmp/compile_scaling.prof")
        pstats.Stats("/tmp/compile_scaling.prof").sort_stats("cumulative").print_stats(25)
        return
    print("| nodes | compiled nodes | compile CPU s | wall s | us per node (CPU) | growth exponent |")
    print("|---|---|---|---|---|---|")
    previous = None
    for n in (int(v) for v in args.sizes.split(",")):
        model = add_chain(n)
        start, wall = time.process_time(), time.perf_counter()
        compiled = onnxlrp.compile(model)
        seconds, wall = time.process_time() - start, time.perf_counter() - wall
        growth = "" if previous is None else f"{math.log(seconds / previous[1]) / math.log(n / previous[0]):.2f}"
        print(f"| {n} | {len(compiled.graph.node)} | {seconds:.2f} | {wall:.2f} | {1e6 * seconds / n:.0f} | "
              f"{growth} |", flush=True)
        previous = (n, seconds)
        del compiled


if __name__ == "__main__":
    main()
