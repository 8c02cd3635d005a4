"""The computational graph of a transformer: components as nodes, their direct paths as edges.

Background:
    The residual stream is a sum: every component reads the sum of the outputs of the components
    before it. So the model is a graph whose nodes are the token+position embedding, every attention
    head and every MLP, and whose edges are the direct paths from one node's output into a later
    node's input. A head has three inputs (its query, key and value), the MLP one, and the logits
    one. Patching an *edge* u → v replaces u's output only in what v reads, and leaves every other
    reader of u untouched: this is path patching (Wang et al. 2022), and masks over all edges at
    once give edge attribution patching and circuit pruning (Syed et al. 2023; Conmy et al. 2023).

Why by hand:
    TransformerLens's bridge offers no hook before the per-head Q/K/V projections for our native
    models (``set_use_split_qkv_input`` raises NotImplementedError), so a head's three inputs cannot
    be told apart through hooks. :class:`ComponentGraph` therefore runs the model from its weights
    through :class:`~tinylens.analysis.forward.WeightForward` (which refuses models it does not
    reproduce), giving each head its own q, k and v input; its forward pass is tested equal to the
    model's on random models of several shapes and on a GPT-2 checkpoint.

Usage:
    graph = ComponentGraph(model)
    run = graph.run(tokens)                       # logits and every node's output
    patched = graph.run(tokens, patch=corrupt_run.outputs, mask=mask)   # edges with mask 1 patched

References:
    Wang et al. 2022 (IOI, path patching); Conmy et al. 2023 (ACDC); Syed et al. 2023 (EAP);
    auto-circuit (UFO-101/auto-circuit), whose edge masks this graph's masks follow.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int

from tinylens.analysis.forward import WeightForward
from tinylens.analysis.protocol import WeightedModel, check_token_ids
from tinylens.errors import ConfigError

NodeOutputs = Float[torch.Tensor, "node #batch pos d_model"]
"""Every node's output; a batch of 1 (e.g. means over reference prompts) broadcasts."""


@dataclass(frozen=True)
class Node:
    """A component whose output is written into the residual stream."""

    name: str
    """``embed``, ``A{layer}.{head}`` or ``M{layer}``."""
    layer: int
    """Block index (``-1`` for the embedding)."""
    head: int | None = None


@dataclass(frozen=True)
class Input:
    """A place that reads the residual stream: a head's q, k or v, an MLP, or the logits."""

    name: str
    """``A{layer}.{head}.q`` (or ``.k``, ``.v``), ``M{layer}`` or ``logits``."""
    layer: int
    """Block index (``n_layers`` for the logits)."""
    node: str
    """The node this input feeds (``logits`` for the logits)."""


@dataclass
class GraphRun:
    """One forward pass through the graph."""

    logits: Float[torch.Tensor, "batch pos d_vocab"]
    outputs: Float[torch.Tensor, "node batch pos d_model"]
    """Every node's output, in :attr:`ComponentGraph.nodes` order."""


class ComponentGraph:
    """Nodes, inputs and edges of a TransformerLens model, and a forward pass with edge patches.

    Supported: pre-norm decoder-only models with sequential attention and MLP (GPT-2 style), learned
    or tinylens's rotary positions, LayerNorm / RMSNorm / no norm, attention-only or with MLPs.
    """

    def __init__(self, model: WeightedModel) -> None:
        self.forward = WeightForward(model)  # refuses a model it cannot reproduce
        self.model = model
        self.n_layers, self.n_heads = self.forward.n_layers, self.forward.n_heads
        self.d_head = self.forward.d_head
        self.has_mlp = self.forward.has_mlp

        self.nodes: list[Node] = [Node("embed", -1)]
        self.inputs: list[Input] = []
        for layer in range(self.n_layers):
            for h in range(self.n_heads):
                self.nodes.append(Node(f"A{layer}.{h}", layer, h))
            for part in "qkv":
                for h in range(self.n_heads):
                    self.inputs.append(Input(f"A{layer}.{h}.{part}", layer, f"A{layer}.{h}"))
            if self.has_mlp:
                self.nodes.append(Node(f"M{layer}", layer))
                self.inputs.append(Input(f"M{layer}", layer, f"M{layer}"))
        self.inputs.append(Input("logits", self.n_layers, "logits"))
        self.node_index = {n.name: i for i, n in enumerate(self.nodes)}
        self.input_index = {d.name: i for i, d in enumerate(self.inputs)}
        self.adjacency = self._adjacency()

    # --- structure ------------------------------------------------------------------------------

    def _adjacency(self) -> torch.Tensor:
        """``[input, node]`` bool: True where the node's output reaches the input directly."""
        adj = torch.zeros(len(self.inputs), len(self.nodes), dtype=torch.bool)
        for i, dst in enumerate(self.inputs):
            for j, src in enumerate(self.nodes):
                is_mlp_input = dst.name.startswith("M")
                same_layer_head = src.head is not None and src.layer == dst.layer
                adj[i, j] = src.layer < dst.layer or (is_mlp_input and same_layer_head)
        return adj

    @property
    def edges(self) -> list[tuple[str, str]]:
        """Every (node, input) pair joined by a direct path, in mask order (input-major)."""
        idx = self.adjacency.nonzero().tolist()
        return [(self.nodes[j].name, self.inputs[i].name) for i, j in idx]

    def zero_mask(self) -> torch.Tensor:
        """An ``[input, node]`` mask that patches nothing."""
        return torch.zeros(len(self.inputs), len(self.nodes))

    def edge_mask(self, edges: list[tuple[str, str]], value: float = 1.0) -> torch.Tensor:
        """A mask with ``value`` on the given (node, input) edges and 0 elsewhere."""
        mask = self.zero_mask()
        for src, dst in edges:
            i, j = self._edge_index(src, dst)
            mask[i, j] = value
        return mask

    def _edge_index(self, src: str, dst: str) -> tuple[int, int]:
        if src not in self.node_index:
            raise ConfigError(f"unknown node {src!r}; nodes are embed, A<layer>.<head>, M<layer>")
        if dst not in self.input_index:
            raise ConfigError(
                f"unknown input {dst!r}; inputs are A<layer>.<head>.q|k|v, M<layer>, logits"
            )
        i, j = self.input_index[dst], self.node_index[src]
        if not self.adjacency[i, j]:
            raise ConfigError(f"there is no direct path from {src} to {dst}")
        return i, j

    # --- forward --------------------------------------------------------------------------------

    def run(
        self,
        tokens: Int[torch.Tensor, "batch pos"],
        *,
        patch: NodeOutputs | None = None,
        mask: Float[torch.Tensor, "*variant input node"] | None = None,
        embed: Float[torch.Tensor, "batch pos d_model"] | None = None,
        input_probe: Float[torch.Tensor, "input batch pos d_model"] | None = None,
    ) -> GraphRun:
        """Forward pass where each input reads ``mask · patch + (1 − mask) · own`` of each node.

        Args:
            tokens: the prompts.
            patch: node outputs to patch in (a corrupted run's :attr:`GraphRun.outputs`, or means
                broadcast over the batch); needed when ``mask`` is given.
            mask: weight of the patch on each edge, 0 = clean, 1 = patched; entries off the
                adjacency are ignored. With a leading variant axis, the batch is run once per variant
                (rows variant-major) and the logits have ``variant × batch`` rows.
            embed: replaces the embedding node's whole output, token plus position (e.g. an
                interpolation of two runs').
            input_probe: added to every input (zeros with ``requires_grad`` give the gradient of a
                metric with respect to each input, as edge attribution needs).
        """
        check_token_ids(tokens, int(self.model.cfg.d_vocab))
        n_var = 1 if mask is None or mask.ndim == 2 else mask.shape[0]
        if n_var > 1:
            tokens = tokens.repeat(n_var, 1)
        diff_mask = None
        if mask is not None:
            if patch is None:
                raise ConfigError("a mask needs the node outputs to patch in (patch=...)")
            diff_mask = (mask * self.adjacency).to(patch.dtype)
            if diff_mask.ndim == 2:
                diff_mask = diff_mask.unsqueeze(0)
        fwd = self.forward
        x0 = fwd.embed(tokens) if embed is None else embed.repeat(n_var, 1, 1)
        outputs: list[torch.Tensor] = [x0]
        resid = x0
        for layer in range(self.n_layers):
            first = self.input_index[f"A{layer}.0.q"]
            heads = slice(first, first + 3 * self.n_heads)
            x = self._read(resid, outputs, heads, patch, diff_mask, n_var, input_probe)
            head_out = self._attention(layer, fwd.norm(layer, "ln1", x))  # [head, rows, pos, d]
            outputs.extend(head_out.unbind(0))
            resid = resid + head_out.sum(0) + self.model.b_O[layer]
            if self.has_mlp:
                i = self.input_index[f"M{layer}"]
                x = self._read(resid, outputs, slice(i, i + 1), patch, diff_mask, n_var, input_probe)
                mlp_out = fwd.mlp(layer, x[0])
                outputs.append(mlp_out)
                resid = resid + mlp_out
        i = self.input_index["logits"]
        x = self._read(resid, outputs, slice(i, i + 1), patch, diff_mask, n_var, input_probe)[0]
        return GraphRun(logits=fwd.unembed(x), outputs=torch.stack(outputs))

    def _read(
        self,
        resid: torch.Tensor,
        outputs: list[torch.Tensor],
        inputs: slice,
        patch: torch.Tensor | None,
        diff_mask: torch.Tensor | None,
        n_var: int,
        input_probe: torch.Tensor | None,
    ) -> Float[torch.Tensor, "input rows pos d_model"]:
        """What the inputs in ``inputs`` read: the residual plus the patched edges' differences."""
        n_in = inputs.stop - inputs.start
        x = resid.unsqueeze(0).expand(n_in, *resid.shape)
        if diff_mask is not None and patch is not None:
            n_src = len(outputs)
            own = torch.stack(outputs)  # [node, rows, pos, d]
            rows = own.shape[1] // n_var
            diff = patch[:n_src].unsqueeze(1) - own.view(n_src, n_var, rows, *own.shape[2:])
            weights = diff_mask[:, inputs, :n_src]  # [variant or 1, input, node]
            if weights.shape[0] == 1:
                delta = torch.einsum("is,svbpm->ivbpm", weights[0], diff)
            else:
                delta = torch.einsum("vis,svbpm->ivbpm", weights, diff)
            x = x + delta.flatten(1, 2)
        if input_probe is not None:
            probe = input_probe[inputs]
            x = x + (probe.repeat(1, n_var, 1, 1) if n_var > 1 else probe)
        return x

    def _attention(
        self, layer: int, x: Float[torch.Tensor, "qkv_head rows pos d_model"]
    ) -> Float[torch.Tensor, "head rows pos d_model"]:
        """Every head's output ``z_h W_O[h]`` given separate (normed) q, k and v inputs per head."""
        n_h = self.n_heads
        xq, xk, xv = x[:n_h], x[n_h : 2 * n_h], x[2 * n_h :]
        q, k, v = self.forward.qkv_per_head(layer, xq, xk, xv)
        return self.forward.head_outputs(layer, self.forward.attend(q, k, v))
