#!/usr/bin/env python3
"""Plots the val-loss curves of swarmnode logs into one SVG (standard library only).

    bench/plot-curves.py OUT.svg "label=path/to/log" ...

Each log is a `swarmnode local` log or a trainer's log: its `msg=eval step=N ...
val_loss=X` lines give the curve.
"""
import re
import sys

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
EVAL = re.compile(r"msg=eval step=(\d+) .*?val_loss=([0-9.]+)")


def curve(path):
    pts = []
    with open(path) as f:
        for line in f:
            m = EVAL.search(line)
            if m:
                pts.append((int(m.group(1)), float(m.group(2))))
    return pts


def main():
    out, series = sys.argv[1], []
    for arg in sys.argv[2:]:
        label, path = arg.split("=", 1)
        series.append((label, curve(path)))
    xs = [x for _, c in series for x, _ in c]
    ys = [y for _, c in series for _, y in c]
    x0, x1, y0, y1 = 0, max(xs), min(ys) - 0.02, max(ys) + 0.02
    W, H, L, R, T, B = 640, 400, 60, 20, 20, 50

    def px(x):
        return L + (x - x0) / (x1 - x0) * (W - L - R)

    def py(y):
        return T + (y1 - y) / (y1 - y0) * (H - T - B)

    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>']
    for i in range(6):
        y = y0 + (y1 - y0) * i / 5
        svg.append(f'<line x1="{L}" x2="{W-R}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#ddd"/>')
        svg.append(f'<text x="{L-6}" y="{py(y)+4:.1f}" text-anchor="end">{y:.2f}</text>')
    for i in range(6):
        x = x0 + (x1 - x0) * i / 5
        svg.append(f'<text x="{px(x):.1f}" y="{H-B+18}" text-anchor="middle">{int(x)}</text>')
    svg.append(f'<text x="{(W+L-R)/2}" y="{H-8}" text-anchor="middle">step</text>')
    svg.append(f'<text x="14" y="{(H-B+T)/2}" text-anchor="middle" transform="rotate(-90 14 {(H-B+T)/2})">val loss</text>')
    for i, (label, c) in enumerate(series):
        col = COLORS[i % len(COLORS)]
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in c)
        svg.append(f'<polyline fill="none" stroke="{col}" stroke-width="2" points="{pts}"/>')
        svg.append(f'<text x="{W-R-8}" y="{T+16+16*i}" text-anchor="end" fill="{col}">{label}: {c[-1][1]:.4f}</text>')
    svg.append("</svg>")
    with open(out, "w") as f:
        f.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()
