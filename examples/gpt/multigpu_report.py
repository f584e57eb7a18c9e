#!/usr/bin/env python3
"""Figures of a multigpu.sh run (standard library only).

Reads what multigpu.sh left under --out and writes summary.json and loss.svg:
  swarm tokens/s (trainer steps x batch tokens over the trainer's wall time),
  the baseline's tokens/s on one GPU and the ideal swarm speed it implies
  (min(GPUs, peers) GPUs each as fast as the whole model on one GPU: the stages
  of a swarm do the same FLOPs per token as the baseline, spread over GPUs),
  pipeline efficiency = swarm / ideal, bytes on the wire per token with the
  configured compression and what the same frames take uncompressed, averaging
  rounds and their times, microbatch counters, and the loss curves.
"""
import argparse
import glob
import json
import os
import re


def config_value(text, key, default=None):
    m = re.search(r"^\s*%s:\s*([^\s#]+)" % re.escape(key), text, re.M)
    return m.group(1) if m else default


def eval_lines(path):
    """(step, loss, val_loss, tokens_per_sec) from a log's msg=eval lines."""
    out = []
    if not os.path.exists(path):
        return out
    for line in open(path):
        if "msg=eval" not in line:
            continue
        f = dict(re.findall(r"(\w+)=([^\s]+)", line))
        try:
            out.append((int(f["step"]), float(f["loss"]), float(f["val_loss"]), float(f.get("tokens_per_sec", 0))))
        except (KeyError, ValueError):
            pass
    return out


def svg_curves(series, path, title):
    """series: list of (label, colour, dash, [(x, y)]); a plain line chart."""
    pts = [p for _, _, _, s in series for p in s]
    if not pts:
        return
    W, H, L, R, T, B = 720, 420, 60, 160, 40, 50
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    x1 = x1 if x1 > x0 else x0 + 1
    pad = (y1 - y0) * 0.05 or 0.1
    y0, y1 = y0 - pad, y1 + pad
    sx = lambda x: L + (x - x0) / (x1 - x0) * (W - L - R)
    sy = lambda y: T + (y1 - y) / (y1 - y0) * (H - T - B)
    o = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">' % (W, H),
         '<rect width="100%" height="100%" fill="white"/>',
         '<text x="%d" y="24" font-size="14">%s</text>' % (L, title)]
    for i in range(6):
        y = y0 + (y1 - y0) * i / 5
        o.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>' % (L, W - R, sy(y), sy(y)))
        o.append('<text x="%d" y="%.1f" text-anchor="end">%.2f</text>' % (L - 6, sy(y) + 4, y))
    for i in range(6):
        x = x0 + (x1 - x0) * i / 5
        o.append('<text x="%.1f" y="%d" text-anchor="middle">%d</text>' % (sx(x), H - B + 18, round(x)))
    o.append('<text x="%d" y="%d" text-anchor="middle">step</text>' % ((L + W - R) // 2, H - 10))
    o.append('<text x="16" y="%d" transform="rotate(-90 16 %d)" text-anchor="middle">loss (nats)</text>' % (H // 2, H // 2))
    for i, (label, colour, dash, s) in enumerate(series):
        if not s:
            continue
        d = " ".join("%.1f,%.1f" % (sx(x), sy(y)) for x, y in s)
        o.append('<polyline fill="none" stroke="%s" stroke-width="2" %s points="%s"/>' % (colour, 'stroke-dasharray="6 4"' if dash else "", d))
        ly = T + 16 * i + 8
        o.append('<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="%s" stroke-width="2" %s/>' % (W - R + 10, W - R + 34, ly, ly, colour, 'stroke-dasharray="6 4"' if dash else ""))
        o.append('<text x="%d" y="%d">%s</text>' % (W - R + 40, ly + 4, label))
    o.append("</svg>")
    open(path, "w").write("\n".join(o) + "\n")


def main():
    ap = argparse.ArgumentParser()
    for a in ("out", "config", "victim"):
        ap.add_argument("--" + a, required=True)
    for a in ("gpus", "peers", "killed-at"):
        ap.add_argument("--" + a, type=int, default=0)
    for a in ("killed-time", "start-time", "end-time"):
        ap.add_argument("--" + a, type=float, default=0)
    a = ap.parse_args()
    cfg = open(a.config).read()
    batch = int(config_value(cfg, "batch"))
    seq = int(config_value(cfg, "seq_len"))

    finals = {}
    for p in glob.glob(os.path.join(a.out, "status", "*.final.json")):
        name = os.path.basename(p)[: -len(".final.json")]
        try:
            finals[name] = json.load(open(p))
        except ValueError:
            pass
    tr = finals.get("trainer", {})
    hist = tr.get("history") or []
    steps = tr.get("step", 0)
    try:  # the trainer's own summary has its final step; its last status sample may be older
        steps = json.load(open(os.path.join(a.out, "summary-trainer.json")))["step"]
    except (OSError, ValueError, KeyError):
        pass
    tokens = steps * batch * seq

    # Swarm speed over the trainer's history: from its first point to its last.
    swarm_tps = 0.0
    timed = [h for h in hist if h.get("time")]
    if len(timed) >= 2:
        from datetime import datetime

        def ts(s):
            s = re.sub(r"(\.\d{6})\d*", r"\1", s.replace("Z", "+00:00"))
            return datetime.fromisoformat(s).timestamp()

        dt = ts(timed[-1]["time"]) - ts(timed[0]["time"])
        if dt > 0:
            swarm_tps = (timed[-1]["step"] - timed[0]["step"]) * batch * seq / dt

    local = eval_lines(os.path.join(a.out, "local.log"))
    local_tps = 0.0
    if local:
        speeds = sorted(x[3] for x in local[1:] or local)  # the first window includes start-up
        local_tps = speeds[len(speeds) // 2]
    gpus_used = min(a.gpus, a.peers) if a.gpus > 0 else 1
    ideal = gpus_used * local_tps

    sent = sum(f.get("wire", {}).get("bytes", 0) for f in finals.values())
    raw = sum(f.get("wire", {}).get("raw_bytes", 0) for f in finals.values())
    rounds = {}
    for p in glob.glob(os.path.join(a.out, "status", "*.jsonl")):
        name = os.path.basename(p)[: -len(".jsonl")]
        seen = []
        for line in open(p):
            try:
                av = json.loads(line).get("averaging", {})
            except ValueError:
                continue
            key = (av.get("rounds", 0), av.get("last_round_ms", 0))
            if key[0] > 0 and (not seen or seen[-1] != key):
                seen.append(key)
        if seen:
            rounds[name] = [ms for _, ms in seen]
    all_ms = sorted(ms for v in rounds.values() for ms in v)

    after_kill = [h for h in hist if a.killed_at and h["step"] > a.killed_at]
    summary = {
        "config": a.config,
        "gpus": a.gpus,
        "stage_servers": a.peers,
        "trainer_steps": steps,
        "tokens_trained": tokens,
        "swarm_tokens_per_sec": round(swarm_tps, 1),
        "local_tokens_per_sec_one_gpu": round(local_tps, 1),
        "ideal_tokens_per_sec": round(ideal, 1),
        "pipeline_efficiency": round(swarm_tps / ideal, 3) if ideal else None,
        "wire_bytes_per_token": round(sent / tokens, 1) if tokens else None,
        "uncompressed_bytes_per_token": round(raw / tokens, 1) if tokens else None,
        "compression_ratio": round(raw / sent, 2) if sent else None,
        "averaging_round_ms": {"count": len(all_ms), "median": all_ms[len(all_ms) // 2] if all_ms else None,
                               "max": all_ms[-1] if all_ms else None, "per_peer": rounds},
        "microbatches": tr.get("microbatches"),
        "killed": {"peer": a.victim, "at_step": a.killed_at, "steps_after": len(after_kill) and after_kill[-1]["step"] - a.killed_at}
        if a.killed_at else None,
        "swarm_first_last_loss": [hist[0]["loss"], hist[-1]["loss"]] if hist else None,
        "swarm_last_val_loss": next((h["val_loss"] for h in reversed(hist) if h.get("val_loss")), None),
        "local_first_last_loss": [local[0][1], local[-1][1]] if local else None,
        "local_last_val_loss": local[-1][2] if local else None,
        "wall_seconds": round(a.end_time - a.start_time, 1) if a.end_time else None,
    }
    json.dump(summary, open(os.path.join(a.out, "summary.json"), "w"), indent=2)
    print(json.dumps({k: v for k, v in summary.items() if k != "averaging_round_ms"}, indent=2))
    print("averaging rounds: %d, median %s ms, max %s ms" % (len(all_ms), summary["averaging_round_ms"]["median"], summary["averaging_round_ms"]["max"]))

    series = [
        ("swarm loss", "#d62728", False, [(h["step"], h["loss"]) for h in hist if h.get("loss")]),
        ("swarm val", "#d62728", True, [(h["step"], h["val_loss"]) for h in hist if h.get("val_loss")]),
        ("local loss", "#1f77b4", False, [(s, l) for s, l, _, _ in local]),
        ("local val", "#1f77b4", True, [(s, v) for s, _, v, _ in local]),
    ]
    title = "%s: swarm of %d stage servers on %d GPUs vs one GPU" % (os.path.basename(a.config), a.peers, a.gpus)
    if a.killed_at:
        title += " (%s killed at step %d)" % (a.victim, a.killed_at)
    svg_curves(series, os.path.join(a.out, "loss.svg"), title)


if __name__ == "__main__":
    main()
