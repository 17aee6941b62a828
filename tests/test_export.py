"""Deployment of the torch layers: ``torch.jit.trace`` + save/load, ``torch.export`` and
``torch.onnx.export`` (both exporters) run under onnxruntime, against the eager modules.

onnx, onnxscript and onnxruntime are test dependencies (requirements/ci.txt) imported plainly:
missing, they are an error here, never a skip.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime
import onnxscript  # noqa: F401 - the dynamo ONNX exporter (torch's default) needs it
import pytest
import torch
from nmn_array.frameworks import torch as nt

import nmn_array

F32_EPS = float(torch.finfo(torch.float32).eps)


class _Positional(torch.nn.Module):
    """``module(*inputs)`` behind a ``forward`` without keyword-only parameters: the
    TorchScript ONNX exporter passes the defaults of those (``deterministic=``) positionally,
    so it cannot call the layers' own ``forward`` (nor nmn.torch's, which has the same)."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.module(*inputs)


class _Attend(torch.nn.Module):
    """``YatEmbed.attend`` as a module's ``forward``."""

    def __init__(self, embed: torch.nn.Module) -> None:
        super().__init__()
        self.embed = embed

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        return self.embed.attend(query)


def _randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float32)


# id -> (module factory, input factory for a batch size); the batch is the first axis
LAYERS: dict[str, tuple[Callable[[], torch.nn.Module], Callable[[int], tuple]]] = {
    "YatNMN": (lambda: nt.YatNMN(6, 4), lambda b: (_randn(b, 6),)),
    "YatNMN-spherical-learnable-eps": (
        lambda: nt.YatNMN(6, 4, spherical=True, learnable_epsilon=True, scalar_bias=True),
        lambda b: (_randn(b, 6),),
    ),
    "YatNMN-weight-normalized": (
        lambda: nt.YatNMN(6, 4, weight_normalized=True, constant_alpha=True),
        lambda b: (_randn(b, 2, 6),),
    ),
    "YatConv1D": (lambda: nt.YatConv1D(3, 4, 3, padding=1), lambda b: (_randn(b, 3, 7),)),
    "YatConv2D": (lambda: nt.YatConv2D(3, 4, 3, padding=1), lambda b: (_randn(b, 3, 6, 6),)),
    "YatConv2D-groups-dilation": (
        lambda: nt.YatConv2D(4, 6, 3, padding=2, dilation=2, groups=2, stride=2),
        lambda b: (_randn(b, 4, 7, 7),),
    ),
    "YatConv3D": (lambda: nt.YatConv3D(2, 4, 3), lambda b: (_randn(b, 2, 4, 5, 5),)),
    "YatConvTranspose1D": (
        lambda: nt.YatConvTranspose1D(3, 4, 3, stride=2),
        lambda b: (_randn(b, 3, 7),),
    ),
    "YatConvTranspose2D-groups": (
        lambda: nt.YatConvTranspose2D(4, 6, 3, stride=2, padding=1, groups=2),
        lambda b: (_randn(b, 4, 5, 5),),
    ),
    "YatConvTranspose3D": (
        lambda: nt.YatConvTranspose3D(2, 4, 3, stride=2),
        lambda b: (_randn(b, 2, 3, 3, 3),),
    ),
    "YatEmbed-lookup": (
        lambda: nt.YatEmbed(10, 4),
        lambda b: (torch.randint(0, 10, (b, 3)),),
    ),
    "YatEmbed-attend": (
        lambda: _Attend(nt.YatEmbed(10, 4, spherical=True)),
        lambda b: (_randn(b, 4),),
    ),
    "MultiHeadYatAttention": (
        lambda: nt.MultiHeadYatAttention(8, 2),
        lambda b: (_randn(b, 5, 8),),
    ),
    "MultiHeadYatAttention-cross-spherical": (
        lambda: nt.MultiHeadYatAttention(8, 2, spherical=True, normalize_qk=True),
        lambda b: (_randn(b, 5, 8), _randn(b, 3, 8), _randn(b, 3, 8)),
    ),
    "RotaryYatAttention": (
        lambda: nt.RotaryYatAttention(8, 2, max_seq_len=16),
        lambda b: (_randn(b, 5, 8),),
    ),
}


def _layer(name: str) -> tuple[torch.nn.Module, tuple, tuple]:
    """The layer in eval mode (non-default alpha) and inputs at batch 3 and batch 5."""
    make, inputs = LAYERS[name]
    torch.manual_seed(0)
    module = make().eval()
    with torch.no_grad():
        for pname, p in module.named_parameters():
            if pname.endswith("alpha"):
                p.fill_(1.3)  # a scale that is not 1 must survive the export
    return module, inputs(3), inputs(5)


def _assert_matches(got: Any, want: torch.Tensor, ulps: float) -> None:
    """``got`` within ``ulps`` float32 units of ``want``, relative to ``want``'s largest entry
    (outputs near 0 are sums of products as large as that, so the error scales with it)."""
    want = want.detach()
    got = torch.as_tensor(np.asarray(got)) if not isinstance(got, torch.Tensor) else got
    assert got.shape == want.shape
    scale = float(want.abs().max()) if want.numel() else 1.0
    torch.testing.assert_close(got.detach(), want, rtol=ulps * F32_EPS, atol=ulps * F32_EPS * scale)


def _quiet_trace(fn: Any, inputs: tuple) -> Any:
    # the tracer warns about every Python bool taken from a size (the argument checks) and
    # about its own deprecation; the outputs are compared below
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.trace(fn, inputs)


# --------------------------------------------------------------------------------------
# torch.jit.trace, save, load
# --------------------------------------------------------------------------------------
# The loaded graph runs the same ATen kernels on the same operands as the eager forward (the
# export path is the out-of-place spelling of the fused forward): measured difference 0 on
# every case here; 4 ulps leaves room only for a different reduction order in the executor.
TRACE_ULPS = 4


@pytest.mark.parametrize("name", LAYERS)
def test_traced_layer_saves_loads_and_matches_eager(name, tmp_path):
    module, x, x_other = _layer(name)
    traced = _quiet_trace(module, x)
    path = tmp_path / "layer.pt"
    torch.jit.save(traced, str(path))
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        _assert_matches(loaded(*x), module(*x), TRACE_ULPS)
        # the sizes are recorded, not frozen: another batch size runs through the same graph
        _assert_matches(loaded(*x_other), module(*x_other), TRACE_ULPS)


@pytest.mark.parametrize("name", ["YatNMN", "YatConv2D-groups-dilation", "RotaryYatAttention"])
def test_loaded_trace_trains_like_eager(name, tmp_path):
    # the exported graph holds plain operators: autograd differentiates it, and the gradients
    # equal the hand-written backward of the eager layer
    module, x, _ = _layer(name)
    path = tmp_path / "layer.pt"
    torch.jit.save(_quiet_trace(module, x), str(path))
    loaded = torch.jit.load(str(path))
    upstream = torch.randn(module(*x).shape)
    (module(*x) * upstream).sum().backward()
    (loaded(*x) * upstream).sum().backward()
    eager = dict(module.named_parameters())
    for pname, p in loaded.named_parameters():
        assert p.grad is not None, pname
        _assert_matches(p.grad, eager[pname].grad, 64)


def _conv_fn(x, w, b):
    return nmn_array.yat_conv(x, w, b, stride=2, padding=1, groups=2, alpha=1.3)


def _attention_fn(q, k, v):
    return nmn_array.yat_attention(q, k, v, causal=True, alpha=1.3, spherical=True)


FUNCTIONS = {
    "yat": (lambda x, w, b: nmn_array.yat(x, w, b, alpha=1.3), ((3, 6), (4, 6), (4,))),
    "yat-spherical": (
        lambda x, w: nmn_array.yat(x, w, spherical=True, epsilon=1e-3),
        ((2, 3, 6), (4, 6)),
    ),
    "yat_conv": (_conv_fn, ((2, 4, 7, 7), (6, 2, 3, 3), (6,))),
    "yat_attention": (_attention_fn, ((2, 2, 5, 4), (2, 2, 5, 4), (2, 2, 5, 3))),
}


@pytest.mark.parametrize("name", FUNCTIONS)
def test_traced_function_saves_loads_and_matches_eager(name, tmp_path):
    fn, shapes = FUNCTIONS[name]
    torch.manual_seed(1)
    args = tuple(_randn(*s) for s in shapes)
    path = tmp_path / "fn.pt"
    torch.jit.save(_quiet_trace(fn, args), str(path))
    _assert_matches(torch.jit.load(str(path))(*args), fn(*args), TRACE_ULPS)


def _backward_nodes(y: torch.Tensor) -> set[str]:
    """The names of the autograd nodes ``y`` was computed through."""
    seen: set[str] = set()
    stack = [y.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and type(node).__name__ not in seen:
            seen.add(type(node).__name__)
            stack.extend(n for n, _ in node.next_functions)
    return seen


def test_export_path_is_taken_only_while_recording():
    # eager calls keep the fused autograd Functions (their hand-written backward), traced and
    # exported calls record plain operators: the grad_fn and the graph tell them apart
    x = _randn(3, 6).requires_grad_(True)
    w = _randn(4, 6)
    assert "_YatScoresBackward" in _backward_nodes(nmn_array.yat(x, w))
    graph = _quiet_trace(lambda x, w: nmn_array.yat(x, w), (x, w)).graph
    kinds = {node.kind() for node in graph.nodes()}
    assert "prim::PythonOp" not in kinds
    assert "aten::matmul" in kinds


# --------------------------------------------------------------------------------------
# ONNX under onnxruntime
# --------------------------------------------------------------------------------------
# onnxruntime has its own GEMM and convolution kernels (other summation orders): the dot
# products differ by about d u |x||w|, and the expanded distance |x|^2 + |w|^2 - 2 x.w carries
# that error relative to itself times (|x|^2 + |w|^2) / D, about 1-3 for these random inputs.
# Measured over the cases below, both exporters: at most 5.2 ulps of the largest output
# (YatConv3D). 32 ulps (4e-6 relative) leaves a 6x margin and is still far below any real
# export mistake (a lost op or a frozen shape is O(1)).
ONNX_ULPS = 32


def _run_onnx(model: bytes, inputs: tuple) -> np.ndarray:
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert len(names) == len(inputs), names
    return session.run(None, {n: t.numpy() for n, t in zip(names, inputs)})[0]


def _input_names(count: int) -> list[str]:
    return [f"in{i}" for i in range(count)]


@pytest.mark.parametrize("name", LAYERS)
def test_onnx_dynamo_export_runs_in_onnxruntime(name):
    # torch's default exporter (dynamo=True, torch.export + onnxscript), batch axis dynamic
    module, x, x_other = _layer(name)
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            x,
            dynamo=True,
            input_names=_input_names(len(x)),
            dynamic_shapes=tuple({0: batch} for _ in x),
            verbose=False,
        )
    model = program.model_proto.SerializeToString()
    with torch.no_grad():
        for inputs in (x, x_other):
            _assert_matches(_run_onnx(model, inputs), module(*inputs), ONNX_ULPS)


@pytest.mark.parametrize("name", LAYERS)
def test_onnx_torchscript_export_runs_in_onnxruntime(name):
    # the older exporter (dynamo=False): a trace, converted op by op, batch axis dynamic
    module, x, x_other = _layer(name)
    names = _input_names(len(x))
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Positional(module),
            x,
            f,
            dynamo=False,
            input_names=names,
            dynamic_axes={n: {0: "batch"} for n in names},
        )
    with torch.no_grad():
        for inputs in (x, x_other):
            _assert_matches(_run_onnx(f.getvalue(), inputs), module(*inputs), ONNX_ULPS)
