"""bench.png from bench.json (written by `cargo xtask bench`).

Left: every metric relative to iptables (1.0 = iptables; the label says which
way is better). Right: eBPF program cost in ns/packet above the no-op.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

doc = json.load(open(sys.argv[1]))
out = sys.argv[2]
modes = doc["modes"]
colors = {"direct": "#2ca02c", "route": "#999999", "iptables": "#d62728", "nftables": "#ff7f0e",
          "netpath-tc": "#1f77b4", "netpath-xdp": "#17becf"}
metrics = [m for m in doc["metrics"] if not m["id"].startswith("conn_errors")
           and (m["values"].get("iptables") or {}).get("median")]

fig, (ax, ax2) = plt.subplots(1, 2, figsize=(16, 0.55 * len(metrics) + 3),
                              gridspec_kw={"width_ratios": [3, 2]})
h = 0.8 / len(modes)
for i, mode in enumerate(modes):
    ys, xs = [], []
    for j, m in enumerate(metrics):
        base = m["values"]["iptables"]["median"]
        v = (m["values"].get(mode) or {}).get("median")
        if v is None or not base:
            continue
        ys.append(j + (i - len(modes) / 2 + 0.5) * h)
        xs.append(v / base)
    ax.barh(ys, xs, height=h, label=mode, color=colors.get(mode))
ax.set_yticks(range(len(metrics)))
ax.set_yticklabels([f"{m['label']} ({'higher' if m['higher_is_better'] else 'lower'} better)"
                    for m in metrics], fontsize=8)
ax.invert_yaxis()
ax.axvline(1.0, color="black", linewidth=0.8)
ax.set_xlabel("relative to iptables (= 1.0), median")
ax.set_xscale("log")
ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
ax.legend(loc="lower right", fontsize=8)
ax.set_title("netpath vs kernel paths, same namespaces, same run")

prog = doc.get("prog_cost") or []
if prog:
    names = [p["case"] for p in prog]
    ax2.barh(range(len(prog)), [p["ns"] for p in prog], color="#1f77b4")
    ax2.set_yticks(range(len(prog)))
    ax2.set_yticklabels(names, fontsize=7)
    ax2.invert_yaxis()
    ax2.set_xlabel("ns per packet (BPF_PROG_TEST_RUN, median)")
    ax2.set_title("eBPF program cost")
else:
    ax2.axis("off")
m = doc["machine"]
fig.suptitle(f"netpath bench - {m['summary']} - {m['date']}", fontsize=9)
fig.tight_layout()
fig.savefig(out, dpi=110)
