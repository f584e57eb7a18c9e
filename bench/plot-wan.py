#!/usr/bin/env python3
"""Plots tokens/s against link rate for each codec (both axes log scale) from bench/wan.sh outputs
into one SVG (standard library only).

    bench/plot-wan.py OUT.svg "1=wan-1mbit.txt" "4=wan-4mbit.txt" ...

Each argument is a link rate in Mbit/s and the saved stdout of one bench/wan.sh
run at that RATE; its final table gives, per codec, the shaped tokens/s (the
points) and the unshaped tokens/s (drawn as the codec's dashed ceiling, the
median over the runs).
"""
import math
import re
import sys

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
ROW = re.compile(r"^(\S+)\s+(\d+)\s+(\d+)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)\s*$")


def table(path):
    rows = {}
    with open(path) as f:
        for line in f:
            m = ROW.match(line)
            if m:
                rows[m.group(1)] = (float(m.group(2)), float(m.group(3)))
    return rows


def main():
    out, runs = sys.argv[1], []
    for arg in sys.argv[2:]:
        rate, path = arg.split("=", 1)
        runs.append((float(rate), table(path)))
    runs.sort()
    codecs = []
    for _, rows in runs:
        for c in rows:
            if c not in codecs:
                codecs.append(c)
    W, H, L, R, T, B = 640, 400, 70, 20, 20, 50
    rates = [r for r, _ in runs]
    x0, x1 = math.log10(min(rates)) - 0.1, math.log10(max(rates)) + 0.1
    vals = [v for _, rows in runs for pair in rows.values() for v in pair if v > 0]
    y0, y1 = math.log10(min(vals)) - 0.1, math.log10(max(vals)) + 0.1

    def px(rate):
        return L + (math.log10(rate) - x0) / (x1 - x0) * (W - L - R)

    def py(v):
        return H - B - (math.log10(max(v, 1)) - y0) / (y1 - y0) * (H - T - B)

    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>']
    for e in range(math.floor(y0), math.ceil(y1) + 1):
        for m in (1, 2, 5):
            v = m * 10 ** e
            if not y0 <= math.log10(v) <= y1:
                continue
            svg.append(f'<line x1="{L}" x2="{W - R}" y1="{py(v):.1f}" y2="{py(v):.1f}" stroke="#ddd"/>')
            svg.append(f'<text x="{L - 6}" y="{py(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
    for r in rates:
        svg.append(f'<text x="{px(r):.1f}" y="{H - B + 18}" text-anchor="middle">{r:g}</text>')
    svg.append(f'<text x="{(L + W - R) / 2}" y="{H - 10}" text-anchor="middle">link rate, Mbit/s (log scale)</text>')
    svg.append(f'<text x="14" y="{H / 2}" text-anchor="middle" transform="rotate(-90 14 {H / 2})">tokens/s (log scale)</text>')
    for i, c in enumerate(codecs):
        color = COLORS[i % len(COLORS)]
        pts = [(r, rows[c][1]) for r, rows in runs if c in rows]
        line = " ".join(f"{px(r):.1f},{py(s):.1f}" for r, s in pts)
        svg.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{line}"/>')
        for r, s in pts:
            svg.append(f'<circle cx="{px(r):.1f}" cy="{py(s):.1f}" r="3" fill="{color}"/>')
        ups = sorted(rows[c][0] for _, rows in runs if c in rows)
        u = ups[len(ups) // 2]
        svg.append(f'<line x1="{L}" x2="{W - R}" y1="{py(u):.1f}" y2="{py(u):.1f}" stroke="{color}" stroke-dasharray="4 4"/>')
        svg.append(f'<text x="{L + 8}" y="{T + 16 * (i + 1)}" fill="{color}">{c} (dashed: unshaped)</text>')
    svg.append("</svg>")
    with open(out, "w") as f:
        f.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()
