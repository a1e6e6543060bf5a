"""Compile graphattn's Triton kernels ahead of time for a CUDA target, with no GPU.

Run as a script with ``TRITON_INTERPRET`` unset (the interpreter replaces ``triton.jit``):
``python tests/triton_aot_worker.py [--full]`` compiles every kernel for every score kind
through Triton's real compiler (TTIR -> TTGIR -> LLVM -> PTX -> cubin with the ptxas that
Triton ships) for sm_90 (H100/H200) and prints one JSON line per kernel. This is what a
first GPU launch would compile, so a kernel the installed Triton cannot compile fails
here, on CPU, instead of on the first GPU a session gets.
"""

from __future__ import annotations

import itertools
import json
import os
import sys

assert os.environ.get("TRITON_INTERPRET") != "1", "run without TRITON_INTERPRET=1"

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from graphattn.ops import triton_backend  # noqa: E402
from graphattn.ops import triton_kernels as tk  # noqa: E402
from graphattn.ops._fused import KINDS, triton_traits  # noqa: E402

# Pointer arguments by role. CSR index arrays: the forward CSR is int64; the transposed
# CSR is int32 where counts allow (Graph.transpose_csr), so both widths are compiled.
INDEX = {"rowptr", "col", "colptr", "row_by_src", "eid"}
STATS = {"stats", "dout_dot_out", "g", "datt_rows", "params", "keep"}  # held in the accumulation dtype
DATA = {
    "dst_term",
    "src_term",
    "value",
    "edge_score_term",
    "edge_bias",
    "edge_value",
    "att",
    "out",
    "dO",
    "d_src_term",
    "d_value",
    "d_edge_score_term",
    "d_edge_bias",
    "d_edge_value",
    "d_dst_term",
}
SCALARS = {"EH": "i64", "H": "i32", "F": "i32", "Cv": "i32", "p": "fp32", "seed": "i32", "degree_bucket": "i32"}
FLAGS = ("HAS_DST_TERM", "HAS_EDGE_SCORE_TERM", "HAS_EDGE_BIAS", "HAS_EDGE_VALUE", "DROPOUT")


def signature(fn, dtype: str, acc: str, index: str, constexprs: dict) -> dict:
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in INDEX:
            sig[name] = "*" + index
        elif name in STATS:
            sig[name] = "*" + acc
        elif name in DATA:
            sig[name] = "*" + dtype
        elif name in SCALARS:
            sig[name] = SCALARS[name]
        else:
            raise KeyError(f"{fn.__name__}: argument {name!r} has no role here; add it to this worker")
    return sig


def compile_one(name: str, kind, dtype: str, flags: bool, index: str, target) -> dict:
    fn = getattr(tk, name)
    acc = "fp64" if dtype == "fp64" else "fp32"
    consts = dict(
        triton_traits(kind.code),
        BLOCK_E=32,
        BLOCK_F=16,
        BLOCK_C=16,
        BLOCK=1024,
        ACC=tl.float64 if acc == "fp64" else tl.float32,
        **{f: flags for f in FLAGS},
    )
    consts = {k: v for k, v in consts.items() if k in fn.arg_names}
    src = ASTSource(fn, signature(fn, dtype, acc, index, consts), consts)
    warps = dict(triton_backend.TUNE_CONFIGS)[32]
    compiled = triton.compile(src, target=target, options={"num_warps": warps})
    return {
        "kernel": name,
        "kind": kind.name,
        "dtype": dtype,
        "flags": flags,
        "index": index,
        "cubin_bytes": len(compiled.asm["cubin"]),
    }


def main(full: bool) -> int:
    target = GPUTarget("cuda", 90, 32)
    names = ("fused_forward_kernel", "fused_backward_src_kernel", "fused_backward_dst_kernel")
    dtypes = ("fp32", "bf16", "fp16", "fp64") if full else ("fp32", "bf16")
    flag_sets = (True, False) if full else (True,)
    failed = 0
    for name, kind, dtype, flags in itertools.product(names, KINDS, dtypes, flag_sets):
        index = "i32" if name == "fused_backward_src_kernel" else "i64"
        try:
            row = compile_one(name, kind, dtype, flags, index, target)
        except Exception as exc:  # report every failure, not only the first
            failed += 1
            row = {
                "kernel": name,
                "kind": kind.name,
                "dtype": dtype,
                "flags": flags,
                "error": f"{type(exc).__name__}: {exc}"[:2000],
            }
        print(json.dumps(row), flush=True)
    for acc in ("fp32", "fp64"):  # the dropout multipliers (no score kind; one per accumulation dtype)
        try:
            row = compile_one("dropout_scale_kernel", KINDS[0], acc, True, "i64", target)
        except Exception as exc:
            failed += 1
            row = {"kernel": "dropout_scale_kernel", "dtype": acc, "error": f"{type(exc).__name__}: {exc}"[:2000]}
        print(json.dumps(row), flush=True)
    print(json.dumps({"triton": triton.__version__, "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main("--full" in sys.argv[1:]))
