"""The results: a table on stdout, geometric means, a JSON file and a PNG chart of the ratios."""

from __future__ import annotations

import json
import math

GEOMEAN_GROUPS = ("model", "user")  # micro benchmarks, the MLP and the denormal pair are not


def geomeans(rows: list, peers: list) -> dict:
    """{peer: {"b1_t2": {"geomean": r, "models": [...]}, ...}} over the GEOMEAN_GROUPS."""
    out = {}
    for peer in peers:
        cells = {}
        for r in rows:
            ratio = r.get("ratio", {}).get(peer)
            if r["group"] in GEOMEAN_GROUPS and ratio:
                cells.setdefault((r["batch"], r["threads"]), []).append((r["model"], ratio))
        out[peer] = {f"b{b}_t{t}": {"geomean": math.exp(sum(math.log(x) for _, x in v) / len(v)),
                                    "models": [m for m, _ in v]}
                     for (b, t), v in sorted(cells.items())}
    return out


def _ms(row, name) -> str:
    t = row.get("time", {}).get(name)
    return f"{t['median_ms']:.3f}" if t else "-"


def _mb(row, name) -> str:
    m = row.get("memory", {}).get(name)
    if not m or "model_mb" not in m:
        return "-"
    return f"{m['model_mb']:.0f}" if m["model_mb"] >= 10 else f"{m['model_mb']:.1f}"


def _note(row) -> str:
    notes = [f"{who}: {msg}" for who, msg in row.get("errors", {}).items()]
    notes += [f"{who} memory: {m['error']}" for who, m in row.get("memory", {}).items()
              if "error" in m]
    d = row.get("max_rel_diff")
    if d is not None and d > 1e-2:
        notes.append(f"outputs differ from onnxruntime (rel {d:.2g})")
    text = "; ".join(notes)
    return text if len(text) <= 90 else text[:87] + "..."


def table(rows: list, peers: list) -> str:
    head = ["model", "batch", "thr", "slimc ms"]
    for p in peers:
        head += [f"{p} ms", f"ratio/{p[:4]}"]
    head += ["compile s", "mem slimc MB"] + [f"mem {p[:4]} MB" for p in peers] + ["note"]
    lines = []
    for r in rows:
        cells = [r["model"], str(r["batch"]), str(r["threads"]), _ms(r, "slimc")]
        for p in peers:
            ratio = r.get("ratio", {}).get(p)
            cells += [_ms(r, p), f"{ratio:.2f}" if ratio else "-"]
        cells += [f"{r['compile_s']:.1f}" if "compile_s" in r else "-", _mb(r, "slimc")]
        cells += [_mb(r, p) for p in peers] + [_note(r)]
        lines.append(cells)
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 or i == len(cells) - 1 else c.rjust(w)
                                  for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    rule = "-" * len(fmt(head))
    return "\n".join([fmt(head), rule] + [fmt(c) for c in lines])


def summary(means: dict) -> str:
    lines = []
    for peer, cells in means.items():
        for key, v in cells.items():
            batch, threads = key[1:].split("_t")
            if batch == "1":
                lines.append(f"geometric mean slimc/{peer}, batch 1, {threads} thread(s): "
                             f"{v['geomean']:.2f} over {len(v['models'])} "
                             f"({', '.join(v['models'])})")
    return "\n".join(lines) or "geometric mean: no model family timed at batch 1"


def errors(rows: list) -> str:
    seen = {}
    for r in rows:
        for who, msg in r.get("errors", {}).items():
            seen.setdefault((r["model"], who, msg), []).append(f"b{r['batch']}/t{r['threads']}")
    return "\n".join(f"{m} [{who}] ({', '.join(where)}): {msg}"
                     for (m, who, msg), where in seen.items())


def write_json(path: str, meta: dict, rows: list, means: dict) -> None:
    with open(path, "w") as f:
        json.dump({"meta": meta, "rows": rows, "geomean": means}, f, indent=1)


def chart(path: str, rows: list, peers: list, meta: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    models = list(dict.fromkeys(r["model"] for r in rows))
    configs = sorted({(r["batch"], r["threads"]) for r in rows})
    fig, axes = plt.subplots(len(peers), 1, figsize=(max(8, 0.9 * len(models) + 2),
                                                     4.2 * len(peers)), squeeze=False)
    width = 0.8 / max(len(configs), 1)
    for ax, peer in zip(axes[:, 0], peers):
        for j, (b, t) in enumerate(configs):
            xs, ys, failed = [], [], []
            for i, m in enumerate(models):
                x = i - 0.4 + width * (j + 0.5)
                for r in rows:
                    if (r["model"], r["batch"], r["threads"]) != (m, b, t):
                        continue
                    ratio = r.get("ratio", {}).get(peer)
                    if ratio:
                        xs.append(x)
                        ys.append(ratio)
                    else:
                        failed.append(x)
            bars = ax.bar(xs, ys, width, label=f"batch {b}, {t} thread{'s' if t > 1 else ''}")
            ax.bar_label(bars, fmt="%.2f", fontsize=6, rotation=90, padding=2)
            ax.plot(failed, [1.0] * len(failed), "x", color="red", markersize=8)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels(models, rotation=30, ha="right")
        ax.set_ylabel(f"slimc time / {peer} time")
        ax.set_title(f"slimc / {peer}: median latency ratio (below 1: slimc faster; "
                     f"x: no ratio, see the errors)")
        ax.legend(fontsize="small")
        ax.grid(axis="y", which="both", alpha=0.3)
    fig.suptitle(f"{meta.get('cpu', '')}, {meta.get('started', '')}", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
