"""Study views: the study results the explorer draws, as plain figures-to-be.

A view is a dict with a ``kind`` the page knows how to draw:

- ``heatmap``: ``rows`` × ``cols`` ``values`` (None where nothing was measured), with axis labels;
- ``circuit``: a circuit's ``nodes`` (heads ``A{layer}.{head}``, MLPs ``M{layer}``) with a score
  each, and its ``edges`` (``sender->receiver``, a head's receiver naming its input: ``A1.0.q``);
- ``curve``: ``x`` and ``y`` series on one chart;
- ``inversion``: InversionView's viewer for one query: the decoder's samples nearest first, each
  with its distance to the query's activation, how often it was written and each token's
  likelihood shift, and the ``epsilon`` that bounds the preimage.

Only results a study wrote are read (``results/*.json`` of its run, those inside the workspace); a
study this module does not know, or a result of an older layout, gives no view rather than an error.
"""

from __future__ import annotations

from typing import Any

from tinylens.explorer.data import RunFiles

MAX_VIEWER_ENTRIES = 12
"""Inversion viewer entries shown per probed model (a site × position each)."""


def study_views(run: RunFiles) -> list[dict[str, Any]]:
    """Every view the run's results support (none for a training run)."""
    views: list[dict[str, Any]] = []
    for build in (_seqcont_views, _inversion_views):
        try:
            views += build(run)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            continue  # another study, or a layout this explorer does not read
    return views


def _seqcont_views(run: RunFiles) -> list[dict[str, Any]]:
    if not (run.has_result("circuits") and run.has_result("graph")):
        return []
    circuits = run.read_result("circuits")
    graph = run.read_result("graph")
    views = []
    for family, circuit in circuits.items():
        patching = circuit["head_patching"]  # [layer][head], normalised: 1 = the whole effect
        # the sizes the patching map has, not graph.json's word for it (a damaged file)
        n_layers, n_heads = len(patching), len(patching[0])
        if (int(graph["n_layers"]), int(graph["n_heads"])) != (n_layers, n_heads):
            continue
        views.append(
            {
                "kind": "heatmap",
                "title": f"{family}: activation patching of each head (1 = the clean behaviour back)",
                "rows": [f"layer {layer}" for layer in range(n_layers)],
                "cols": [f"head {head}" for head in range(n_heads)],
                "values": patching,
            }
        )
        scores = {
            f"A{layer}.{head}": patching[layer][head]
            for layer in range(n_layers)
            for head in range(n_heads)
        }
        views.append(
            {
                "kind": "circuit",
                "title": (
                    f"{family}: circuit of {len(circuit['nodes'])} components and "
                    f"{len(circuit['edges'])} edges, keeping {circuit['node_share']:.0%} (nodes) and "
                    f"{circuit['edge_share']:.0%} (edges) of the logit difference"
                ),
                "n_layers": n_layers,
                "n_heads": n_heads,
                "nodes": [{"name": n, "score": scores.get(n)} for n in circuit["nodes"]],
                "edges": list(circuit["edges"]),
                # EAP-IG score per edge (studies run before they were stored have none)
                "edge_scores": circuit.get("edge_scores", {}),
                "score": (
                    "a head's activation-patching score (MLPs are not patched alone); edge width: "
                    "|EAP-IG score|, blue where the edge raises the logit difference, red where it "
                    "lowers it"
                ),
            }
        )
        curve = circuit["eap_ig_curve"]
        views.append(
            {
                "kind": "curve",
                "title": f"{family}: faithfulness of the top-k edges by EAP-IG score",
                "x": curve["n_edges"],
                "y": curve["normalised"],
                "x_label": "edges kept",
                "y_label": "logit difference, normalised",
            }
        )
    return views


def _inversion_views(run: RunFiles) -> list[dict[str, Any]]:
    views = []
    for model in ("counting", "addition"):
        if not run.has_result(model) or not run.has_result("settings"):
            continue
        result = run.read_result(model)
        epsilon = float(run.read_result("settings")["epsilon"])
        for entry in result["viewer"][:MAX_VIEWER_ENTRIES]:
            views.append(
                {
                    "kind": "inversion",
                    "title": f"{model}: what {entry['site']} holds at the {entry['position']}",
                    "query": entry["query"],
                    "epsilon": epsilon,
                    "rows": [
                        {"tokens": tokens, "shift": shift, "distance": distance, "count": count}
                        for tokens, shift, distance, count in entry["rows"]
                    ],
                }
            )
        for patch_map in result["patching"]["maps"]:
            for position, shares in patch_map["shares"].items():  # [layer][head]
                views.append(
                    {
                        "kind": "heatmap",
                        "title": (
                            f"{model}: share of the effect of corrupting {patch_map['corruption']} "
                            f"restored by patching each head at {position}"
                        ),
                        "rows": [f"layer {layer}" for layer in range(len(shares))],
                        "cols": [f"head {head}" for head in range(len(shares[0]))],
                        "values": shares,
                    }
                )
    return views
