"""What each NVVM intrinsic a kernel may call becomes on the CPU, as host LLVM IR, for the GPU
emulator (gpu_emulator.py).

The emulator makes every call to `@llvm.nvvm.<name>` one to `@slimc_emu.<name>`;
`replacements_ir` defines those, one table of signatures per kind:

- the thread's intrinsics (`INTRINSICS`): the sreg reads of the thread's and block's indices
  and sizes, the block barriers and the warp shuffles. They stand on the runtime that runs the
  threads (gpu_emulator_ir.py): they read its globals (`@slimc_emu.tid`, `@slimc_emu.cur`, ...)
  and wait through its `@slimc_emu.wait`, which parks the thread and switches to the scheduler;
  a shuffle computes its source lane as PTX's shfl.sync does.
- the pure arithmetic that libdevice's math functions (f64 exp, log, tanh, ...) are written with
  (`ARITHMETIC`: llvm.nvvm.add.rn.d, d2i.hi, lohi.i2d, rcp.approx.ftz.d, ...), which a module
  with libdevice linked in calls; a test checks the table against libdevice's declarations.
"""

from __future__ import annotations

__all__ = ["INTRINSICS", "ARITHMETIC", "replacements_ir"]

# ----- the thread's intrinsics ----------------------------------------------------------------

SHUFFLE_MODES = ("bfly", "down", "up", "idx")  # the runtime's %mode numbers, in order


def _intrinsics() -> dict:
    """The thread's intrinsics: name after `llvm.nvvm.` -> (return type, parameter types) of
    its replacement `@slimc_emu.<name>`. A barrier or shuffle takes first its call site's
    number (gpu_emulator.py's `_number_sites`), then the intrinsic's arguments."""
    table = {f"read.ptx.sreg.{reg}.{d}": ("i32", "")
             for reg in ("tid", "ntid", "ctaid", "nctaid") for d in "xyz"}
    table["read.ptx.sreg.laneid"] = ("i32", "")
    table["read.ptx.sreg.warpsize"] = ("i32", "")
    table["barrier0"] = ("void", "i32")  # LLVM 22 upgrades it to the next one when parsing
    table["barrier.cta.sync.aligned.all"] = ("void", "i32, i32")
    table["barrier.cta.sync.all"] = ("void", "i32, i32")
    for mode in SHUFFLE_MODES:
        for suffix, ty in (("f32", "float"), ("i32", "i32")):
            table[f"shfl.sync.{mode}.{suffix}"] = (ty, f"i32, i32, {ty}, i32, i32")
    return table


INTRINSICS = _intrinsics()

# What the thread's intrinsics share: the shuffle itself, the lane id and the warp's size.
_THREAD_IR = r"""
; A warp shuffle of the 32-bit value %v with PTX shfl.sync's semantics (%mode: 0 bfly, 1 down,
; 2 up, 3 idx; %c packs the clamp and the segment mask). Each lane publishes its value and
; waits for its warp, reads its source lane's value, and waits again, so that no lane
; overwrites its value (in a next shuffle) before all have read it.
define i32 @slimc_emu.shfl(i32 %mode, i32 %v, i32 %b, i32 %c, i32 %site) {
start:
  %t = load i32, ptr @slimc_emu.cur
  %th = call ptr @slimc_emu.thread(i32 %t)
  %slot = getelementptr %Thread, ptr %th, i32 0, i32 1
  store i32 %v, ptr %slot
  call void @slimc_emu.wait(i32 2, i32 %site)
  %lane = and i32 %t, 31
  %bval = and i32 %b, 31
  %cval = and i32 %c, 31
  %c8 = lshr i32 %c, 8
  %segmask = and i32 %c8, 31
  %notseg = xor i32 %segmask, -1
  %minlane = and i32 %lane, %segmask
  %clamp = and i32 %cval, %notseg
  %maxlane = or i32 %minlane, %clamp
  switch i32 %mode, label %idx [ i32 0, label %bfly
                                 i32 1, label %down
                                 i32 2, label %up ]
bfly:
  %jb = xor i32 %lane, %bval
  %pb = icmp sle i32 %jb, %maxlane
  br label %pick
down:
  %jd = add i32 %lane, %bval
  %pd = icmp sle i32 %jd, %maxlane
  br label %pick
up:
  %ju = sub i32 %lane, %bval
  %pu = icmp sge i32 %ju, %maxlane
  br label %pick
idx:
  %bi = and i32 %bval, %notseg
  %ji = or i32 %minlane, %bi
  %pi = icmp sle i32 %ji, %maxlane
  br label %pick
pick:
  %j = phi i32 [ %jb, %bfly ], [ %jd, %down ], [ %ju, %up ], [ %ji, %idx ]
  %inrange = phi i1 [ %pb, %bfly ], [ %pd, %down ], [ %pu, %up ], [ %pi, %idx ]
  %src = select i1 %inrange, i32 %j, i32 %lane
  %warp = sub i32 %t, %lane
  %s = add i32 %warp, %src
  %n = load i32, ptr @slimc_emu.n
  %exists = icmp ult i32 %s, %n  ; a partial last warp has no lanes past the block's end
  br i1 %exists, label %read, label %none
read:
  %ths = call ptr @slimc_emu.thread(i32 %s)
  %pslot = getelementptr %Thread, ptr %ths, i32 0, i32 1
  %got = load i32, ptr %pslot
  br label %done
none:
  br label %done
done:
  %r = phi i32 [ %got, %read ], [ -1, %none ]
  call void @slimc_emu.wait(i32 2, i32 %site)
  ret i32 %r
}

define i32 @slimc_emu.read.ptx.sreg.laneid() {
  %t = load i32, ptr @slimc_emu.cur
  %lane = and i32 %t, 31
  ret i32 %lane
}

define i32 @slimc_emu.read.ptx.sreg.warpsize() {
  ret i32 32
}
"""


def replacements_ir(arithmetic: set) -> str:
    """The replacements of the thread's intrinsics (sreg reads, barriers, shuffles) and of the
    `arithmetic` intrinsics: the intrinsics' signatures, after a site number for a barrier or
    shuffle."""
    out = []
    for reg in ("tid", "ntid", "ctaid", "nctaid"):
        for k, d in enumerate("xyz"):
            out.append(f"define i32 @slimc_emu.read.ptx.sreg.{reg}.{d}() {{\n"
                       f"  %p = getelementptr [3 x i32], ptr @slimc_emu.{reg}, i64 0, i64 {k}\n"
                       f"  %v = load i32, ptr %p\n  ret i32 %v\n}}")
    for name, (_, params) in INTRINSICS.items():
        if name.startswith("barrier"):
            arg = ", i32 %id" if params == "i32, i32" else ""
            out.append(f"define void @slimc_emu.{name}(i32 %site{arg}) {{\n"
                       f"  call void @slimc_emu.wait(i32 1, i32 %site)\n  ret void\n}}")
    for mode_number, mode in enumerate(SHUFFLE_MODES):
        for suffix, ty in (("f32", "float"), ("i32", "i32")):
            out.append(
                f"define {ty} @slimc_emu.shfl.sync.{mode}.{suffix}(i32 %site, i32 %mask, "
                f"{ty} %v, i32 %b, i32 %c) {{\n"
                f"  %bits = bitcast {ty} %v to i32\n"
                f"  %r = call i32 @slimc_emu.shfl(i32 {mode_number}, i32 %bits, i32 %b, "
                f"i32 %c, i32 %site)\n"
                f"  %out = bitcast i32 %r to {ty}\n  ret {ty} %out\n}}")
    out.append(_THREAD_IR)
    return "\n\n".join(out) + "\n" + arithmetic_ir(arithmetic)


# ----- NVVM's arithmetic ---------------------------------------------------------------------

_ROUNDING = {"rn": 1, "rz": 0, "rp": 2, "rm": 3}  # PTX's rounding suffixes, as llvm.set.rounding's


def _rounded(mode: str, ty: str, op: str, args: str) -> str:
    """IR for %r = the constrained op `op` rounded as `mode` (.rm, .rp, .rz): the host's rounding
    mode is set around it (the function must be strictfp)."""
    return (f"call void @llvm.set.rounding(i32 {_ROUNDING[mode]}) strictfp\n"
            f"%r = call {ty} @llvm.experimental.constrained.{op}({args}, "
            f'metadata !"round.dynamic", metadata !"fpexcept.ignore") strictfp\n'
            f"call void @llvm.set.rounding(i32 1) strictfp")


def _arithmetic() -> dict:
    """NVVM's pure arithmetic, which libdevice's math (f64 exp, log, ...) calls: name ->
    (return type, parameter types, the IR computing %r from %a, %b, %c). Roundings are exact
    (directed ones switch the host's rounding mode); approximations are exact here and `.ftz`
    (flush denormals to zero) is ignored."""
    table = {}
    for s, ty, t, fabs in (("f", "float", "f32", "f32"), ("ftz.f", "float", "f32", "ftz.f32"),
                           ("d", "double", "f64", "f64")):
        one, two, three = (ty,), (ty, ty), (ty, ty, ty)
        for mode in _ROUNDING:
            rn = mode == "rn"
            for op in ("add", "mul", "div"):
                table[f"{op}.{mode}.{s}"] = (ty, two, f"f{op} {ty} %a, %b" if rn else
                                             _rounded(mode, ty, f"f{op}.{t}", f"{ty} %a, {ty} %b"))
            abc = f"{ty} %a, {ty} %b, {ty} %c"
            table[f"fma.{mode}.{s}"] = (ty, three, f"call {ty} @llvm.fma.{t}({abc})" if rn else
                                        _rounded(mode, ty, f"fma.{t}", abc))
            table[f"rcp.{mode}.{s}"] = (ty, one, f"fdiv {ty} 1.0, %a" if rn else
                                        _rounded(mode, ty, f"fdiv.{t}", f"{ty} 1.0, {ty} %a"))
            table[f"sqrt.{mode}.{s}"] = (ty, one, f"call {ty} @llvm.sqrt.{t}({ty} %a)" if rn else
                                         _rounded(mode, ty, f"sqrt.{t}", f"{ty} %a"))
        for name, fn in (("floor", "floor"), ("ceil", "ceil"), ("trunc", "trunc"),
                         ("round", "roundeven"), ("sqrt.approx", "sqrt")):  # round: cvt.rni
            table[f"{name}.{s}"] = (ty, one, f"call {ty} @llvm.{fn}.{t}({ty} %a)")
        for name, fn in (("fmax", "maxnum"), ("fmin", "minnum")):
            table[f"{name}.{s}"] = (ty, two, f"call {ty} @llvm.{fn}.{t}({ty} %a, {ty} %b)")
        table[f"rsqrt.approx.{s}"] = (ty, one, f"%q = call {ty} @llvm.sqrt.{t}({ty} %a)\n"
                                               f"%r = fdiv {ty} 1.0, %q")
        table[f"fabs.{fabs}"] = (ty, one, f"call {ty} @llvm.fabs.{t}({ty} %a)")
    for s in ("f", "ftz.f"):
        ftz = s[:-2].replace("ftz", ".ftz")
        table[f"div.approx.{s}"] = table["div.rn.f"]
        table[f"lg2.approx.{s}"] = ("float", ("float",), "call float @llvm.log2.f32(float %a)")
        table[f"ex2.approx.{s}32"] = ("float", ("float",), "call float @llvm.exp2.f32(float %a)")
        table[f"sin.approx.{s}"] = ("float", ("float",), "call float @llvm.sin.f32(float %a)")
        table[f"cos.approx.{s}"] = ("float", ("float",), "call float @llvm.cos.f32(float %a)")
        table[f"saturate.{s}"] = ("float", ("float",),  # NaN -> 0, as cvt.sat
                                  "%m = call float @llvm.maxnum.f32(float %a, float 0.0)\n"
                                  "%r = call float @llvm.minnum.f32(float %m, float 1.0)")
        table[f"f2h.rn{ftz}"] = ("i16", ("float",), "%h = fptrunc float %a to half\n"
                                                    "%r = bitcast half %h to i16")
        for mode in _ROUNDING:
            table[f"d2f.{mode}{ftz}"] = ("float", ("double",), "fptrunc double %a to float"
                                         if mode == "rn" else
                                         _rounded(mode, "float", "fptrunc.f32.f64", "double %a"))
    table["rcp.approx.ftz.d"] = table["rcp.rn.d"]
    table["d2i.lo"] = ("i32", ("double",), "%w = bitcast double %a to i64\n"
                                           "%r = trunc i64 %w to i32")
    table["d2i.hi"] = ("i32", ("double",), "%w = bitcast double %a to i64\n"
                                           "%h = lshr i64 %w, 32\n%r = trunc i64 %h to i32")
    table["lohi.i2d"] = ("double", ("i32", "i32"), "%l = zext i32 %a to i64\n"
                         "%h = zext i32 %b to i64\n%s = shl i64 %h, 32\n%w = or i64 %s, %l\n"
                         "%r = bitcast i64 %w to double")
    for src, f, it in (("i", "si", "i32"), ("ui", "ui", "i32"), ("ll", "si", "i64"),
                       ("ull", "ui", "i64")):
        for mode in _ROUNDING:
            for dst, ty, t in (("d", "double", "f64"), ("f", "float", "f32")):
                table[f"{src}2{dst}.{mode}"] = (ty, (it,), f"{f}tofp {it} %a to {ty}"
                                                if mode == "rn" else
                                                _rounded(mode, ty, f"{f}tofp.{t}.{it}", f"{it} %a"))
        # float -> int: rounded to an integer as the suffix says, then saturated (NaN -> 0)
        for mode, fn in (("rn", "roundeven"), ("rz", "trunc"), ("rm", "floor"), ("rp", "ceil")):
            for fsrc, ty, t in (("d", "double", "f64"), ("f", "float", "f32")):
                table[f"{fsrc}2{src}.{mode}"] = (
                    it, (ty,), f"%n = call {ty} @llvm.{fn}.{t}({ty} %a)\n"
                    f"%r = call {it} @llvm.fpto{f}.sat.{it}.{t}({ty} %n)")
            table[f"f2{src}.{mode}.ftz"] = table[f"f2{src}.{mode}"]
    for name, t, wide, ext in (("i", "i32", "i64", "sext"), ("ui", "i32", "i64", "zext"),
                               ("ll", "i64", "i128", "sext"), ("ull", "i64", "i128", "zext")):
        table[f"mulhi.{name}"] = (t, (t, t), f"%x = {ext} {t} %a to {wide}\n"
                                  f"%y = {ext} {t} %b to {wide}\n%p = mul {wide} %x, %y\n"
                                  f"%h = lshr {wide} %p, {t[1:]}\n%r = trunc {wide} %h to {t}")
    for name, greater in (("i", "sgt"), ("ui", "ugt")):  # |a - b| + c
        table[f"sad.{name}"] = ("i32", ("i32",) * 3, f"%g = icmp {greater} i32 %a, %b\n"
                                "%x = sub i32 %a, %b\n%y = sub i32 %b, %a\n"
                                "%d = select i1 %g, i32 %x, i32 %y\n%r = add i32 %d, %c")
    return table


ARITHMETIC = _arithmetic()


def arithmetic_ir(names: set) -> str:
    """The definitions of the `names` intrinsics' replacements `@slimc_emu.<name>`; one that
    switches the rounding mode is strictfp, as LLVM's constrained intrinsics require."""
    out = []
    for name in sorted(names):
        ret, params, body = ARITHMETIC[name]
        args = ", ".join(f"{ty} %{v}" for ty, v in zip(params, "abc"))
        body = body if "%r =" in body else f"%r = {body}"
        strict = " strictfp" if "constrained" in body else ""
        out.append(f"define {ret} @slimc_emu.{name}({args}){strict} {{\n  "
                   + body.replace("\n", "\n  ") + f"\n  ret {ret} %r\n}}")
    return "\n\n".join(out) + "\n"
