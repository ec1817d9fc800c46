"""Winograd convolution: eligible 3x3 convolutions become ``winograd_conv2d`` where it pays.

A ``conv`` qualifies when it is 2-D, float32, 3x3, stride 1, dilation 1, group 1, with constant
weights and static shapes. The pass transforms its filter once (U = G g G^T, see
ir/ops/winograd.py) and replaces it with ``winograd_conv2d(x, U, bias) {tile, pads}``. Which
layers, and which tile, is decided per layer by a cost model (`CostModel`) that predicts the
run time of the direct convolution and of F(2x2, 3x3) and F(4x4, 3x3) from N, H, W, Cin, Cout.
The direct convolution is priced as it will run: the layout pass's blocked kernel where both
channel counts are whole vectors ("blocked"), im2col and a GEMM otherwise ("direct").

Precision (float32, against float64 direct convolution, on He-scaled weights and ReLU
activations; ResNet-18's four 3x3 layer shapes and two small ones, tests/test_winograd.py): the
largest error of a layer relative to the largest output of that layer is, compiled,

    direct convolution (im2col + GEMM)  <= 2e-6
    F(2x2, 3x3)                         <= 6e-7   (bound stated: 2e-6)
    F(4x4, 3x3)                         <= 5e-6   (bound stated: 2e-5)

`ERROR_BOUND` states those bounds. Whole models with F(4x4) on every eligible layer stay far
inside -O2's tolerance (rtol 1e-3 / atol 1e-4 against onnxruntime; numbers at
`LEVEL_TILES`), so -O2 and -O3 both use F(2x2) and F(4x4), as the cost model finds faster.

The cost model prices what each path does -- multiply-adds, elements the transforms (or
im2col) move, weights streamed, a fixed cost -- with coefficients fitted to measurements of the
CPU kernels (`features`, `fit`, `PRIOR`). The built-in coefficients were measured on an AMD
Zen 3 host; the other kinds of machine slimc runs on have per-path factors shipped
(`SHIPPED_FACTORS`), so they measure nothing either. A machine of an unknown kind measures
itself once, at first use (both direct paths and both tiles on three layers, ~7 s),
scales the coefficients to match (`calibrate`), and keeps the result in the compile cache
folder (``$SLIMC_CACHE_DIR`` or ``~/.cache/slimc``, under ``winograd/``).
``SLIMC_WINOGRAD_CALIBRATE=0`` never measures, ``=1`` measures a host of a known kind too;
``python -m slimc.codegen.cpu.winograd_cost calibrate`` measures again now.
``SLIMC_COST_MODEL=fixed`` uses only the shipped tables (no measurement, no stored
calibration: two machines of one kind emit the same code); ``=builtin`` uses the built-in
coefficients everywhere.
The measuring is the code generator's: the CPU backend builds this pass with its target's
model (codegen/cpu/winograd_cost.py `cost_model`: `host_model` of a `Host` that can measure
this machine, or the built-in coefficients for a machine it cannot run). Passes never import
codegen, and nothing here is set by importing it. A `Winograd()` built without a model (by a
user, or `slimc opt --passes winograd`) uses the built-in coefficients.

``SLIMC_DEBUG=winograd`` prints, for every 3x3 convolution, the decision and why: what makes
it ineligible, or the predicted times and the tile chosen. ``compile(...,
disable_passes=["winograd"])`` turns the pass off; ``Winograd(force=4)`` (or ``"direct"``)
overrides the cost model, for experiments and tests.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from slimc.ir import Graph, Node, dtypes
from slimc.ir.debug import log
from slimc.ir.errors import SlimcError
from slimc.ir.graph import constant_data
from slimc.ir.ops.winograd import TILES, alpha_of, transform_filter

from .pass_manager import Pass
from .rewriter import Any, Builder, Const, Match, Op, Opt, Rule, apply_rule

# max |error| / max |y| of one layer in float32: the stated bounds (measured values are 3-4x
# below them; tests/test_winograd.py checks both the algorithm and the compiled kernel)
ERROR_BOUND = {2: 2e-6, 4: 2e-5}

# The tiles each level may use. -O2 promises rtol 1e-3 / atol 1e-4 against onnxruntime.
# Measured with F(4x4) forced on every eligible layer, compiled, against onnxruntime, on the
# test corpus (realistically scaled random weights, calibrated batch norms), as the largest
# max|err| / (atol + rtol |y|): real-size ResNet-18 0.036 (direct convolution 0.016, F(2x2)
# 0.018), resnet18_small 0.014, vgg_small 0.011, densenet_small 0.001. F(4x4) keeps more
# than 25x headroom, so -O2 uses both tiles and -O3 has none that trades more.
LEVEL_TILES = {2: (2, 4), 3: (2, 4)}


def tiles_for_level(opt_level: int) -> tuple:
    return LEVEL_TILES.get(opt_level, ())


# ----------------------------------------------------------------------------------------------
# Which convolutions qualify
# ----------------------------------------------------------------------------------------------


def is_3x3_conv(node: Node) -> bool:
    w = node.inputs[1] if len(node.inputs) > 1 else None
    return (node.op == "conv" and w is not None and w.type.rank == 4
            and tuple(w.type.shape[2:]) == (3, 3))


def ineligible(node: Node) -> Optional[str]:
    """Why this 3x3 conv cannot take Winograd, or None."""
    from slimc.ir import get_op

    x, w = node.inputs[0], node.inputs[1]
    a = get_op("conv").resolve_attrs(node.attrs, node.label)
    if x.type.dtype != dtypes.f32:
        return f"dtype {x.type.dtype}: the Winograd kernel is float32 only"
    if not (x.type.is_static and node.outputs[0].type.is_static):
        return "its shapes are not static"
    if 0 in x.type.shape or 0 in node.outputs[0].type.shape:
        return "it is empty (no batch, channels or pixels): the direct conv writes nothing"
    if int(a["group"]) != 1:
        return f"group={a['group']} (Winograd here needs group=1)"
    if any(int(s) != 1 for s in (a["strides"] or [1, 1])):
        return f"strides {list(a['strides'])} (Winograd needs stride 1)"
    if any(int(d) != 1 for d in (a["dilations"] or [1, 1])):
        return f"dilations {list(a['dilations'])} (Winograd needs dilation 1)"
    if constant_data(w) is None:
        return f"its weights %{w.name} are not a constant (the filter transform is done at " \
               f"compile time)"
    return None


@dataclass(frozen=True)
class Layer:
    """What the cost model sees of a convolution."""

    n: int
    cin: int
    cout: int
    h: int
    w: int
    pads: tuple = (1, 1, 1, 1)

    @property
    def out_hw(self) -> tuple:
        pt, pl, pb, pr = self.pads
        return self.h + pt + pb - 2, self.w + pl + pr - 2

    def __str__(self) -> str:
        ho, wo = self.out_hw
        return f"{self.cin}->{self.cout} ch, {self.h}x{self.w}" + \
            (f" (out {ho}x{wo})" if (ho, wo) != (self.h, self.w) else "") + \
            (f", batch {self.n}" if self.n != 1 else "")


def layer_of(node: Node) -> Layer:
    n, cin, h, w = node.inputs[0].type.shape
    pads = tuple(int(p) for p in (node.attrs.get("pads") or (0, 0, 0, 0)))
    return Layer(int(n), int(cin), int(node.inputs[1].type.shape[0]), int(h), int(w), pads)


# ----------------------------------------------------------------------------------------------
# The cost model
# ----------------------------------------------------------------------------------------------

PATHS = ("direct", "blocked", "F2", "F4")
# "direct" is the conv as im2col and a GEMM on NCHW; "blocked" the direct conv as the layout
# pass runs it when both channel counts are whole vectors (gen_blocked.py, converted at both
# ends among Winograd layers): the same multiply-adds without im2col, and on a large-channel
# small image far faster than a Winograd kernel streaming a^2/9 times the weights (the Xeon
# here, one thread, 512 -> 512 channels at 7x7: blocked 1.9 ms, F(4x4) 3.6 ms).
BLOCK_TILES = 64  # about the tiles per block of the CPU kernel (gen_winograd.BLOCK_TILES)


def _up(a: int, b: int) -> int:
    return -(-a // b) * b


def features(path: str, L: Layer, vw: int = 8) -> np.ndarray:
    """The work a path does on a layer, in the units the coefficients price.

    direct: [multiply-adds 2*9*Cin*Cout*P, im2col elements 9*Cin*P, outputs Cout*P,
             weights 9*Cin*Cout, 1] over P = N*Ho*Wo output positions;
    F(m):   [GEMM flops 2*a^2*T*Cin*Cout', input transform outputs a^2*T*Cin',
             output transform inputs a^2*T*Cout', transformed weights streamed
             a^2*Cin*Cout' * (blocks of ~64 tiles), 1] over T = N*ceil(Ho/m)*ceil(Wo/m)
             tiles, a = m + 2; channels' rounded up to whole vectors of `vw` floats.
    """
    ho, wo = L.out_hw
    if path in ("direct", "blocked"):  # (the blocked kernel's coefficients price no im2col)
        p = L.n * ho * wo
        return np.array([2.0 * 9 * L.cin * L.cout * p, 9.0 * L.cin * p, 1.0 * L.cout * p,
                         9.0 * L.cin * L.cout, 1.0])
    m = int(path[1:])
    a2 = alpha_of(m) ** 2
    ntx = -(-wo // m)
    t = L.n * (-(-ho // m)) * ntx
    blocks = -(-t // max(ntx, BLOCK_TILES))
    cin, cout = _up(L.cin, vw), _up(L.cout, vw)
    return np.array([2.0 * a2 * t * L.cin * cout, 1.0 * a2 * t * cin, 1.0 * a2 * t * cout,
                     1.0 * a2 * L.cin * cout * blocks, 1.0])


# Coefficients (seconds per unit of each feature) fitted by `fit` (non-negative least squares
# on the relative error) to 53 layers (2x2 to 224x224 pixels, 1 to 1024 channels, batch 1 to
# 16) measured with `winograd_cost.measure`, one thread, on the development host: an AMD EPYC
# (Zen 3, AVX2; LLVM cpu znver3) shared with other work (load 4-7 on its 2 cores), each
# value the fastest of many runs over up to three sweeps.
PRIOR = {
    "direct": [1.68e-11, 1.52e-10, 0.0, 2.02e-10, 2.43e-06],
    # not measured on the development host: priced as direct until a host's calibration
    # scales it (`calibrate`), or by direct's factor in a table without one (`predict`)
    "blocked": [1.68e-11, 1.52e-10, 0.0, 2.02e-10, 2.43e-06],
    "F2": [1.57e-11, 1.25e-10, 2.27e-10, 9.94e-11, 1.82e-06],
    "F4": [2.03e-11, 1.16e-10, 4.24e-10, 8.65e-11, 1.54e-06],
}
PRIOR_CPU, PRIOR_VW = "znver3", 8
PRIOR_HOST = "AMD EPYC Zen 3 (znver3, AVX2), one thread"

# Per-path factors on the built-in coefficients for the other kinds of machine slimc runs on,
# each measured with ``python -m slimc.codegen.cpu.winograd_cost calibrate`` on an idle
# machine of that kind: a compile there uses them and measures nothing, and two machines of
# one kind make the same choices. (cpu, floats a vector) -> factors.
SHIPPED_FACTORS = {
    # AMD EPYC Zen 4, 2026-12-07: the medians of four calibrations (direct 0.626-0.642,
    # blocked 0.474-0.480, F2 0.643-0.665, F4 0.545-0.574)
    ("znver4", 16): {"direct": 0.629, "blocked": 0.477, "F2": 0.653, "F4": 0.567},
    # Intel Xeon (Emerald Rapids), 2026-12-07: the medians of four calibrations (direct
    # 0.495-0.560, blocked 0.355-0.403, F2 0.670-0.782, F4 0.827-0.939)
    ("emeraldrapids", 16): {"direct": 0.516, "blocked": 0.361, "F2": 0.692, "F4": 0.864},
}


def nnls(a: np.ndarray, b: np.ndarray, iters: int = 100) -> np.ndarray:
    """min ||a x - b|| subject to x >= 0 (Lawson-Hanson active set)."""
    n = a.shape[1]
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    for _ in range(iters):
        grad = a.T @ (b - a @ x)
        if passive.all() or grad[~passive].max(initial=-np.inf) <= 1e-12 * np.abs(grad).max():
            break
        passive[np.argmax(np.where(passive, -np.inf, grad))] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            neg = passive & (z <= 0)
            step = np.min(x[neg] / (x[neg] - z[neg]))
            x = x + step * (z - x)
            passive &= x > 1e-15
    return x


def _layer_of_row(r: dict) -> Layer:
    n, cin, h, w = r["shape"]
    return Layer(n, cin, r["cout"], h, w)


def fit(rows: list, vw: int = 8) -> dict:
    """Coefficients per path from measurements ({"shape": [N, Cin, H, W], "cout": C, path:
    seconds}, pads 1): least squares on the relative error, coefficients >= 0. This is how
    `PRIOR` was made; `python -m slimc.codegen.cpu.winograd_cost --sweep` measures rows."""
    coef = {}
    for path in PATHS:
        data = [(_layer_of_row(r), r[path]) for r in rows if path in r]
        f = np.array([features(path, L, vw) for L, _ in data])
        t = np.array([s for _, s in data])
        scale = f.max(axis=0)
        x = nnls((f / scale) / t[:, None], np.ones(len(t)))
        coef[path] = list(x / scale)
    return coef


@dataclass
class CostModel:
    """Predicted seconds of each path on a layer: coefficients . features, times a per-path
    factor from a host's own measurements (1 for the host the coefficients come from)."""

    coef: dict = field(default_factory=lambda: {k: list(v) for k, v in PRIOR.items()})
    factor: dict = field(default_factory=lambda: {p: 1.0 for p in PATHS})
    vw: int = PRIOR_VW
    source: str = f"built-in, fitted on {PRIOR_HOST}"
    measurements: list = field(default_factory=list, repr=False)

    def predict(self, path: str, layer: Layer) -> float:
        f = features(path, layer, self.vw)
        factor = self.factor.get(path, self.factor.get("direct", 1.0) if path == "blocked"
                                 else 1.0)
        return float(np.dot(self.coef[path], f)) * factor

    def to_json(self) -> dict:
        return {"coef": self.coef, "factor": self.factor, "vw": self.vw, "source": self.source,
                "measurements": self.measurements}

    @classmethod
    def from_json(cls, d: dict) -> "CostModel":
        """Raises ValueError for a model of other features (a stale file)."""
        n = len(features("direct", Layer(1, 1, 1, 1, 1)))
        if set(d["coef"]) != set(PATHS) or any(len(c) != n for c in d["coef"].values()):
            raise ValueError("a cost model of other features")
        return cls(coef=d["coef"], factor=d["factor"], vw=d["vw"], source=d["source"],
                   measurements=d.get("measurements", []))


# ----- a host: the code generator measures it ------------------------------------------------


@dataclass
class Host:
    """The machine compiles run on, as the CPU code generator describes it. `key` names the
    CPU and its features (a calibration is valid for that key only); `measure(shapes)` times
    direct, F2 and F4 on ((N, Cin, H, W), Cout) layers and returns rows as `fit` takes them."""

    key: str
    cpu: str
    vector_width: int
    measure: Callable


_models: dict = {}  # Host.key -> its CostModel, for the life of the process

# The layers a calibration times (every path each): many pixels and few channels, few
# pixels and many channels -- the two ends of ResNet-style networks -- and the last stage's
# 512 channels at 7x7, where Winograd's weights outgrow L2 and it may lose to direct.
CALIBRATION_SHAPES = (((1, 64, 56, 56), 64), ((1, 256, 14, 14), 256), ((1, 512, 7, 7), 512))
# Bump when a kernel or the features change: stored calibrations are then measured again.
MODEL_VERSION = 3


def cache_folder() -> Optional[str]:
    """``$SLIMC_CACHE_DIR`` (``off`` for none), else ``~/.cache/slimc`` (the compile cache)."""
    value = os.environ.get("SLIMC_CACHE_DIR")
    if value and value.lower() in ("off", "0", "none", "disabled"):
        return None
    return value or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                 os.path.expanduser("~/.cache"), "slimc")


def calibration_path(folder: str, key: str) -> str:
    import hashlib

    digest = hashlib.sha256(f"{key}|v{MODEL_VERSION}".encode()).hexdigest()[:16]
    return os.path.join(folder, "winograd", f"cost-{digest}.json")


def calibrate(host: Host) -> CostModel:
    """Time `CALIBRATION_SHAPES` on `host` and scale the built-in coefficients to match: a
    path's factor is the geometric mean of measured / predicted over the shapes."""
    start = time.perf_counter()
    rows = host.measure(list(CALIBRATION_SHAPES))
    prior = CostModel(vw=host.vector_width)
    factor = {p: float(np.exp(np.mean([np.log(r[p] / prior.predict(p, _layer_of_row(r)))
                                       for r in rows if p in r])))
              for p in PATHS if any(p in r for r in rows)}
    return CostModel(factor=factor, vw=host.vector_width, measurements=rows,
                     source=f"calibrated on this host ({host.cpu}) in "
                            f"{time.perf_counter() - start:.1f} s")


def _calibration_wanted(host: Host) -> bool:
    """SLIMC_WINOGRAD_CALIBRATE: "0" never measures, "1" measures once even on the kind of
    CPU the built-in coefficients come from; by default a host of another kind measures
    (one whose shipped factors cover every path uses them instead, `host_model`)."""
    mode = os.environ.get("SLIMC_WINOGRAD_CALIBRATE", "auto").lower()
    if mode in ("0", "off", "no", "false"):
        return False
    if mode in ("1", "on", "yes", "true", "force"):
        return True
    return (host.cpu, host.vector_width) != (PRIOR_CPU, PRIOR_VW)


def table_model(cpu: str, vector_width: int) -> CostModel:
    """The model of a kind of machine without measuring: its shipped factors, or the built-in
    coefficients (exact for the kind they were fitted on) at its vector width."""
    factors = SHIPPED_FACTORS.get((cpu, vector_width))
    if factors is not None:
        return CostModel(factor=dict(factors), vw=vector_width,
                         source=f"built-in, with the factors shipped for {cpu}")
    return CostModel(vw=vector_width)


def cost_model_mode() -> str:
    """``SLIMC_COST_MODEL``: "auto" (default: a stored calibration of this machine, else the
    table of its kind where it prices every path, else a new calibration of a CPU of another
    kind or of an older table, else the table), "fixed" (the table of its
    kind, never a measurement or a stored calibration: every machine of a kind compiles the
    same code), or "builtin" (the built-in coefficients everywhere, as the tests use)."""
    mode = os.environ.get("SLIMC_COST_MODEL", "auto").strip().lower() or "auto"
    if mode not in ("auto", "fixed", "builtin"):
        raise SlimcError(f"SLIMC_COST_MODEL={mode!r}: expected auto, fixed or builtin")
    return mode


def host_model(host: Host) -> CostModel:
    """The cost model of the machine `host` measures, memoized per process (see
    `cost_model_mode`): its calibration stored in the cache folder; else its kind's shipped
    factors; else, at first use, a new calibration when wanted (`_calibration_wanted`) and
    there is a cache folder to keep it; else the built-in model."""
    mode = cost_model_mode()
    if mode == "builtin":
        return CostModel(vw=host.vector_width)
    if mode == "fixed":
        return table_model(host.cpu, host.vector_width)
    key = host.key
    if key in _models:
        return _models[key]
    folder = cache_folder()
    path = calibration_path(folder, key) if folder else None
    model = None
    if path and os.path.exists(path):
        try:
            with open(path) as f:
                model = CostModel.from_json(json.load(f))
        except (OSError, ValueError, KeyError, TypeError):
            model = None  # unreadable: measure again
    shipped = SHIPPED_FACTORS.get((host.cpu, host.vector_width))
    # a table without a factor for every path (one shipped before the path existed) is used
    # only where this host cannot measure itself
    if model is None and shipped is not None and \
            os.environ.get("SLIMC_WINOGRAD_CALIBRATE", "auto").lower() not in \
            ("1", "on", "yes", "true", "force") and (set(shipped) >= set(PATHS) or not path):
        model = table_model(host.cpu, host.vector_width)
    if model is None and path and _calibration_wanted(host):
        model = calibrate(host)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(model.to_json(), f, indent=1)
            os.replace(tmp, path)  # atomic: processes calibrating at once do not clash
        except OSError:
            pass  # a read-only cache: this process keeps the model in memory
    if model is None:  # its kind's table, or the built-in coefficients
        model = table_model(host.cpu, host.vector_width)
    log("winograd", f"cost model: {model.source}; factors " +
        ", ".join(f"{p} {model.factor[p]:.2f}" for p in PATHS if p in model.factor) +
        (f" ({path})" if path and os.path.exists(path) else ""))
    _models[key] = model
    return model


# ----------------------------------------------------------------------------------------------
# The pass
# ----------------------------------------------------------------------------------------------


def winograd_rule(tile_of: Callable[[Node], int]) -> Rule:
    """The rewrite as a rule: the conv (with or without a bias) becomes winograd_conv2d with
    its filter transformed for the tile `tile_of(conv)` chose."""

    def rewrite(m: Match, b: Builder):
        conv = m.node("conv")
        tile = tile_of(conv)
        u = b.const(transform_filter(m.data("w"), tile), name=conv.outputs[0].name + ".wino_u")
        bias = [m["b"]] if "b" in m.values else []
        pads = [int(p) for p in (conv.attrs.get("pads") or [0, 0, 0, 0])]
        return b.op("winograd_conv2d", [m["x"], u] + bias, tile=tile, pads=pads)

    doc = "a chosen 3x3 conv becomes winograd_conv2d with its filter transformed at compile time"
    return Rule("winograd_conv2d", Op("conv", Any("x"), Const("w"), Opt(Any("b")), name="conv"),
                rewrite, doc=doc)


def _ms(s: float) -> str:
    return f"{s * 1e6:.1f} us" if s < 1e-4 else f"{s * 1e3:.2f} ms"


@dataclass
class Winograd(Pass):
    """The `winograd` pass. opt_level decides the tiles allowed (`tiles_for_level`); `force`
    ("direct", 2 or 4) overrides the cost model; `model` is the target's cost model (the
    backend gives it; without one, the built-in coefficients); `blocked_direct`: whether a
    direct conv over whole vectors of channels will run blocked (the layout pass follows),
    else it is priced as im2col and a GEMM."""

    opt_level: int = 2
    force: object = None
    model: Optional[CostModel] = None
    blocked_direct: bool = True
    name: str = "winograd"

    def __post_init__(self):
        if self.force not in (None, "direct") + TILES:
            raise ValueError(f"Winograd(force=...) takes 'direct' or a tile of {TILES}, got "
                             f"{self.force!r}")

    def decide(self, node: Node) -> tuple:
        """(tile or None, the reason in words)."""
        why = ineligible(node)
        if why:
            return None, f"direct: {why}"
        layer = layer_of(node)
        allowed = tiles_for_level(self.opt_level)
        if self.force is not None:
            tile = None if self.force == "direct" else int(self.force)
            return tile, f"{'direct' if tile is None else f'F({tile}x{tile})'}: forced"
        if not allowed:
            return None, f"direct: -O{self.opt_level} allows no Winograd tile"
        model = self.model or CostModel()
        direct = "blocked" if self.blocked_direct and layer.cin % model.vw == 0 and \
            layer.cout % model.vw == 0 else "direct"
        times = {"direct": model.predict(direct, layer)}
        for t in TILES:
            times[t] = model.predict(f"F{t}", layer)
        best = min([t for t in allowed], key=lambda t: times[t])
        parts = [f"direct{' (blocked)' if direct == 'blocked' else ''} "
                 f"{_ms(times['direct'])}"] + \
            [f"F({t}x{t}) {_ms(times[t])}" + ("" if t in allowed else
                                              f" (not at -O{self.opt_level}: error bound "
                                              f"{ERROR_BOUND[t]:.0e})") for t in TILES]
        predicted = "predicted " + ", ".join(parts)
        if times[best] < times["direct"]:
            gain = times["direct"] / times[best]
            return best, f"F({best}x{best}), {gain:.1f}x faster: {predicted}"
        return None, f"direct: {predicted}"

    def run(self, graph: Graph) -> bool:
        changed = False
        chosen: dict = {}
        rule = winograd_rule(lambda conv: chosen[id(conv)])
        for node in list(graph.nodes):
            if node.graph is not graph or not is_3x3_conv(node):
                continue
            tile, why = self.decide(node)
            log("winograd", f"%{node.outputs[0].name} ({node.label or 'conv'}, "
                            f"{_describe(node)}): {why}")
            if tile is None:
                continue
            chosen[id(node)] = tile
            changed |= apply_rule(graph, rule, node)
        return changed


def _describe(node: Node) -> str:
    try:
        return str(layer_of(node))
    except (TypeError, ValueError):
        return "shapes " + ", ".join(str(v.type) for v in node.inputs if v is not None)
