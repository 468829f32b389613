"""Ahead-of-time compilation of the re-ranking Triton kernel for the GPUs it is meant for.

:mod:`kdreid.evaluation.jaccard_triton`'s kernel runs compiled only on CUDA; the CPU tests run it
under Triton's interpreter, which never lowers it. Here Triton compiles it without a GPU (ptxas
and cuobjdump ship in Triton's wheel, under ``triton/backends/nvidia/bin``) for sm_80 (A100) and
sm_90 (H100, H200), in every specialisation its launcher produces: the launches of real
re-ranking runs on the CPU are recorded (the kernel replaced by a recorder that hands the work to
the torch path), and each launch's arguments become the signature, constants, attributes and
options Triton's JIT would derive from them on a GPU. A change to the kernel, or to how it is
launched, that no longer compiles fails here; an argument this test cannot spell fails loudly.
"""

import inspect
import re
import subprocess
from typing import NamedTuple

import pytest
import torch

from kdreid.evaluation import jaccard_triton, rerank

triton = pytest.importorskip("triton", reason="Triton is not installed (CPU-only torch wheels)")

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.nvidia.compiler import CUDAOptions  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

ARCHS = (80, 90)

DTYPES = {
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float32: "fp32",
    torch.float64: "fp64",
    torch.int8: "i8",
    torch.int16: "i16",
    torch.int32: "i32",
    torch.int64: "i64",
    torch.uint8: "u8",
}
"""Triton's spelling of the element type a tensor argument points to (``"*" + spelling``)."""

DIVISIBLE = [["tt.divisibility", 16]]
"""The attribute Triton's JIT gives a pointer aligned to 16 bytes, or an int divisible by 16."""

SCENARIOS = {
    # name: ((query rows, gallery rows, memory budget) of a re_ranking_features run, the type
    # the JIT gives its row stride, out.stride(0) = gallery rows)
    "odd-gallery": ((7, 33, 2_000), "i32"),  # small chunks, some starting at odd entries
    "gallery-of-16": ((5, 32, 1 << 20), "i32 divisible by 16"),
    "one-gallery-row": ((4, 1, 1 << 20), "constexpr"),  # the JIT makes a 1 a constant
}


class Recorder:
    """The jitted kernel's stand-in: records ``kernel[grid](*args, **kwargs)``, runs torch."""

    def __init__(self):
        self.launches = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append((args, kwargs))
            jaccard_triton._accumulate_torch(*args[:7], jaccard_triton._Workspace())

        return launch


def recorded_launches(monkeypatch, num_query, num_gallery, memory_budget):
    """The kernel launches of a CPU re-ranking run, as on CUDA: ``[(args, kwargs), ...]``."""
    recorder = Recorder()
    with monkeypatch.context() as patch:
        patch.setattr(jaccard_triton, "triton_mode", lambda device: "triton")
        patch.setattr(jaccard_triton, "_kernel", lambda interpret: recorder)
        gen = torch.Generator().manual_seed(num_query * 1000 + num_gallery)
        q_feat = torch.randn(num_query, 8, generator=gen)
        g_feat = torch.randn(num_gallery, 8, generator=gen)
        rerank.re_ranking_features(q_feat, g_feat, k1=5, k2=3, memory_budget=memory_budget)
    assert recorder.launches, "the re-ranking run launched no kernel"
    return recorder.launches


def argument_type(name, value):
    """``(type, divisible by 16)`` of one runtime argument, as Triton's JIT specialises it.

    A value the JIT would turn into a constant (the int 1) gives ``("constexpr", False)``.
    """
    if isinstance(value, torch.Tensor):
        if value.dtype not in DTYPES:
            pytest.fail(f"argument {name!r}: no Triton spelling here for {value.dtype}")
        return "*" + DTYPES[value.dtype], value.data_ptr() % 16 == 0
    if isinstance(value, int) and not isinstance(value, bool):
        if value == 1:
            return "constexpr", False
        if not -(2**63) <= value < 2**64:
            pytest.fail(f"argument {name!r}: {value} does not fit a 64-bit int")
        kind = "i32" if -(2**31) <= value < 2**31 else "i64" if value < 2**63 else "u64"
        return kind, value % 16 == 0
    pytest.fail(f"argument {name!r}: a {type(value).__name__}, which this test cannot type")


class Spec(NamedTuple):
    """One compilation the JIT would make, named by parameter (``(name, value)`` items)."""

    signature: tuple  # parameter -> "*fp32", "i32", ..., "constexpr"
    constexprs: tuple  # parameter -> value, for the "constexpr" ones
    divisible: tuple  # the parameters given DIVISIBLE
    options: tuple  # compile option (num_warps, ...) -> value


def compile_specs(kernel, launches):
    """The distinct :class:`Spec` the JIT compiles for ``launches``, named by the kernel's own
    parameters (``kernel.params``)."""
    option_names = set(CUDAOptions.__dataclass_fields__)
    specs = set()
    for args, kwargs in launches:
        options = {k: v for k, v in kwargs.items() if k not in kernel.arg_names}
        unknown = sorted(set(options) - option_names)
        if unknown:
            pytest.fail(f"launch keywords {unknown} are neither parameters nor compile options")
        named = {k: v for k, v in kwargs.items() if k in kernel.arg_names}
        try:
            bound = inspect.signature(kernel.fn).bind(*args, **named)
        except TypeError as error:
            pytest.fail(
                f"the launch does not fit the kernel's parameters {kernel.arg_names}: {error}"
            )
        bound.apply_defaults()
        signature, constexprs, divisible = {}, {}, []
        for param in kernel.params:
            value = bound.arguments[param.name]
            if param.is_constexpr:
                kind, aligned = "constexpr", False
            else:
                kind, aligned = argument_type(param.name, value)
            signature[param.name] = kind
            if kind == "constexpr":
                constexprs[param.name] = value
            if aligned:
                divisible.append(param.name)
        options = sorted(options.items())
        specs.add(
            Spec(
                tuple(signature.items()),
                tuple(constexprs.items()),
                tuple(divisible),
                tuple(options),
            )
        )
    return sorted(specs, key=repr)


def compile_kernel(kernel, spec, arch):
    """``triton.compile`` of ``kernel`` as ``spec`` says, for CUDA's sm_``arch``."""
    source = ASTSource(
        fn=kernel,
        signature=dict(spec.signature),
        constexprs=dict(spec.constexprs),
        attrs={(kernel.arg_names.index(name),): DIVISIBLE for name in spec.divisible},
    )
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=dict(spec.options))


@pytest.fixture
def kernel(monkeypatch, tmp_path):
    """The jitted kernel, compiled into an empty cache (each compilation runs every stage)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton_cache"))
    jitted = jaccard_triton._kernel(interpret=False)
    assert type(jitted) is triton.runtime.jit.JITFunction, f"not a compilable kernel: {jitted!r}"
    return jitted


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("arch", ARCHS, ids=lambda arch: f"sm_{arch}")
def test_kernel_compiles_ahead_of_time(kernel, monkeypatch, tmp_path, scenario, arch):
    run, stride = SCENARIOS[scenario]
    specs = compile_specs(kernel, recorded_launches(monkeypatch, *run))
    strides = {
        dict(s.signature)["row_stride"] + " divisible by 16" * ("row_stride" in s.divisible)
        for s in specs
    }
    assert strides == {stride}, "the scenario no longer gives the row stride it is named for"
    if scenario == "odd-gallery":  # chunks of the query entries that start unaligned
        assert {"entry_cols" in s.divisible for s in specs} == {True, False}
    cuobjdump = triton.knobs.nvidia.cuobjdump.path
    for spec in specs:
        compiled = compile_kernel(kernel, spec, arch)
        num_warps = dict(spec.options).get("num_warps", CUDAOptions.num_warps)
        assert compiled.metadata.target.arch == arch and compiled.name == "_jaccard_kernel"
        assert compiled.metadata.num_warps == num_warps
        ptx = compiled.asm["ptx"]
        # sm_90 is compiled for sm_90a (Hopper's arch-specific features), as Triton does
        assert re.search(rf"^\.target sm_{arch}a?\s*$", ptx, re.MULTILINE), ptx[:300]
        assert re.search(r"^\.visible \.entry _jaccard_kernel\(", ptx, re.MULTILINE)
        assert f".reqntid {num_warps * 32}" in ptx
        cubin = compiled.asm["cubin"]
        assert isinstance(cubin, bytes) and len(cubin) > 1000 and cubin[:4] == b"\x7fELF"
        (tmp_path / "kernel.cubin").write_bytes(cubin)
        listing = subprocess.run(
            [cuobjdump, "-lelf", str(tmp_path / "kernel.cubin")], capture_output=True, text=True
        )
        assert listing.returncode == 0, listing.stderr
        listing = listing.stdout
        assert re.search(rf"\.sm_{arch}a?\.cubin$", listing.strip()), listing


def test_argument_types_are_those_of_tritons_jit(kernel, monkeypatch):
    """:func:`argument_type` against Triton's own specialisation of the recorded arguments."""
    from triton.backends.compiler import BaseBackend
    from triton.runtime.jit import mangle_type

    launches = [recorded_launches(monkeypatch, *run)[-1] for run, _ in SCENARIOS.values()]
    for args, _ in launches:
        for param, value in zip(kernel.params, args):
            kind, aligned = argument_type(param.name, value)
            assert kind == mangle_type(value, specialize=True), param.name
            if isinstance(value, torch.Tensor):
                assert aligned == (BaseBackend.get_tensor_specialization(value, align=True) == "D")
            elif kind != "constexpr":
                assert aligned == (BaseBackend.get_int_specialization(value, align=True) == "D")
