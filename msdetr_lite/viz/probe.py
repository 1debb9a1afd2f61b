"""The mechanism probe's figure (msdetr_lite.probe): does the decoder separate a GT's candidates?"""
from __future__ import annotations

from typing import Mapping, Sequence

from matplotlib.ticker import MaxNLocator

from .figures import new_figure
from .palette import scheme_color, scheme_label, scheme_style

_MATCHER = (("cap_binds", "the 25% cap binds (images)"), ("o2o_is_o2m_top1", "o2o's pick = o2m's top-1 (objects)"),
            ("weakest_iou", "IoU of the weakest o2m target"), ("positive_score", "class prob. of o2m targets"))


def plot_probe(probes: Mapping[str, Sequence[dict]]):
    """Four panels from `probe.mean_over_runs` per scheme ({"o2o": [...], "ms": [...]}, epochs in
    order, each {"epoch", "seeds", "layers": [{stat: value}]}):
    (a) the best (thin) and second-best (thick) candidate score of a GT per decoder layer, last epoch;
    (b) the similarity of a GT's two best candidates as they enter self-attention (thin) and as
        they leave it (thick), per layer, last epoch;
    (c) the final layer's second-best candidate score after every epoch;
    (d) the o2m matcher at the final layer after every epoch, for the scheme with an o2m branch
        (else the first): cap binding, o2o pick = o2m top-1, weakest target IoU, target class prob.
    Returns the Figure."""
    fig, axes = new_figure(1, 4, panel=(3.9, 3.5))
    (ax_a, ax_b, ax_c, ax_d) = axes[0]
    for scheme, recs in probes.items():
        if not recs:
            continue
        color, style = scheme_color(scheme, scheme), scheme_style(scheme, scheme)
        last = recs[-1]["layers"]
        layers = list(range(1, len(last) + 1))
        ax_a.plot(layers, [l["score1"] for l in last], style, color=color, lw=1, marker=".")
        ax_a.plot(layers, [l["score2"] for l in last], style, color=color, lw=2.2, marker="o", ms=4,
                  label=f"{scheme_label(scheme)} ({recs[-1]['seeds']} seeds)")
        ax_b.plot(layers, [l["sim_pre_sa"] for l in last], style, color=color, lw=1, marker=".")
        ax_b.plot(layers, [l["sim_post_sa"] for l in last], style, color=color, lw=2.2, marker="o", ms=4)
        epochs = [r["epoch"] for r in recs]
        ax_c.plot(epochs, [r["layers"][-1]["score2"] for r in recs], style, color=color, lw=2.2, marker="o", ms=4)
    o2m_scheme = "ms" if "ms" in probes else next(iter(probes))
    recs = probes.get(o2m_scheme) or []
    for (name, label), marker in zip(_MATCHER, "os^D"):
        ax_d.plot([r["epoch"] for r in recs], [r["layers"][-1][name] for r in recs], marker=marker, ms=4,
                  label=label)
    ax_a.set_title("(a) best (thin) and 2nd-best (thick)\ncandidate score, last epoch", fontsize=10)
    ax_a.set_xlabel("decoder layer", fontsize=10)
    ax_a.set_ylabel("score of the GT's class", fontsize=10)
    ax_b.set_title("(b) similarity of the 2 best candidates:\nentering (thin) / leaving (thick) self-attn",
                   fontsize=10)
    ax_b.set_xlabel("decoder layer", fontsize=10)
    ax_b.set_ylabel("cosine similarity", fontsize=10)
    ax_c.set_title("(c) 2nd-best candidate score,\nfinal layer, per epoch", fontsize=10)
    ax_c.set_xlabel("epoch", fontsize=10)
    ax_d.set_title(f"(d) the o2m matcher on {o2m_scheme},\nfinal layer, per epoch", fontsize=10)
    ax_d.set_xlabel("epoch", fontsize=10)
    ax_d.set_ylim(0, 1.02)
    ax_a.legend(fontsize=8)
    ax_d.legend(fontsize=7.5, loc="lower left")
    for ax in (ax_a, ax_b, ax_c, ax_d):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=9)
        ax.grid(alpha=0.3)
    return fig
