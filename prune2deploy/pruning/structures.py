"""The structures of a BERT-family encoder that can be removed whole, and the model without them.

A structure is one attention head (its head_dim rows of Q, K and V and the matching input
columns of the attention output projection) or one FFN neuron (a row of the intermediate
Linear and the matching input column of the FFN output Linear). While training, a removed
structure is a mask on those rows and columns (the mask machinery of `masks.py`); a removed
structure contributes nothing to the layer's output, so the masked model and the compact one
(`compact`: the rows and columns gone, a module with none left replaced by its bias) compute
the same function.

A compact model records its widths in `config.p2d_structure` ({"heads": [...], "ffn": [...]},
per layer) beside transformers' native `config.pruned_heads`; `build` rebuilds that shape
before the weights are loaded (plain `from_pretrained` loads it too where the FFN widths are
uniform and no module is empty).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

ROLES = {
    "attention.self.query": "q",
    "attention.self.key": "k",
    "attention.self.value": "v",
    "attention.output.dense": "o",
    "intermediate.dense": "i",
    "output.dense": "f",
}
_NAME = re.compile(r"^(.*\.layer\.(\d+)\.)(" + "|".join(re.escape(r) for r in ROLES) + r")$")


@dataclass(frozen=True)
class Layer:
    index: int
    names: dict[str, str]  # role (q k v o i f) -> qualified module name
    heads: int  # heads of the full layer
    head_dim: int
    ffn: int  # FFN width of the full layer


@dataclass(frozen=True)
class Structure:
    """The removable structures of a model's encoder, layer by layer."""

    layers: tuple[Layer, ...]

    @staticmethod
    def of(model: nn.Module, modules: dict[str, nn.Module]) -> "Structure":
        """From the prunable `modules` (name -> Linear) of an uncompacted `model`."""
        config = getattr(model, "config", None)
        heads = getattr(config, "num_attention_heads", None)
        found: dict[int, dict[str, str]] = {}
        for name in modules:
            m = _NAME.match(name)
            if m:
                found.setdefault(int(m.group(2)), {})[ROLES[m.group(3)]] = name
        layers = []
        for i in sorted(found):
            names = found[i]
            if set(names) != set(ROLES.values()):
                raise ValueError(f"layer {i}: not a BERT-shaped layer (found {sorted(names)})")
            o = modules[names["o"]].weight
            if not heads or o.shape[1] % heads:
                raise ValueError(f"layer {i}: attention width {o.shape[1]} is not {heads} whole heads")
            layers.append(Layer(i, names, heads, o.shape[1] // heads, modules[names["f"]].weight.shape[1]))
        if not layers:
            raise ValueError(f"{type(model).__name__}: no BERT-shaped encoder layers to prune structurally")
        return Structure(tuple(layers))

    def norm_names(self) -> dict[str, str]:
        """Output projection ("o" or "f") name -> the LayerNorm its output is added before (BERT's
        post-LN layers: `...attention.output.LayerNorm`, `...output.LayerNorm`)."""
        return {layer.names[r]: layer.names[r].rsplit(".", 1)[0] + ".LayerNorm" for layer in self.layers
                for r in ("o", "f")}

    def kept(self, modules: dict[str, nn.Module]) -> dict[str, list[list[int]]]:
        """Which heads and neurons each layer keeps, read from the masks (a structure is kept
        while any of its output-projection inputs is)."""
        from .masks import MASK

        heads, ffn = [], []
        for layer in self.layers:
            o = getattr(modules[layer.names["o"]], MASK).reshape(-1, layer.heads, layer.head_dim).any(-1).any(0)
            f = getattr(modules[layer.names["f"]], MASK).any(0)
            heads.append(torch.nonzero(o).flatten().tolist())
            ffn.append(torch.nonzero(f).flatten().tolist())
        return {"heads": heads, "ffn": ffn}

    @torch.no_grad()
    def masks_for(self, modules: dict[str, nn.Module], kept: dict[str, list[list[int]]]) -> dict[str, torch.Tensor]:
        """The weight masks that remove every structure not in `kept`."""
        out = {}
        for layer, heads, neurons in zip(self.layers, kept["heads"], kept["ffn"]):
            dev = modules[layer.names["o"]].weight.device
            h = torch.zeros(layer.heads, dtype=torch.bool, device=dev)
            h[heads] = True
            rows = h.repeat_interleave(layer.head_dim)
            n = torch.zeros(layer.ffn, dtype=torch.bool, device=dev)
            n[neurons] = True
            for role in ("q", "k", "v"):
                w = modules[layer.names[role]].weight
                out[f"{layer.names[role]}.weight"] = rows[:, None].expand_as(w).clone()
            w = modules[layer.names["o"]].weight
            out[f"{layer.names['o']}.weight"] = rows[None, :].expand_as(w).clone()
            w = modules[layer.names["i"]].weight
            out[f"{layer.names['i']}.weight"] = n[:, None].expand_as(w).clone()
            w = modules[layer.names["f"]].weight
            out[f"{layer.names['f']}.weight"] = n[None, :].expand_as(w).clone()
        return out

    def check(self, masks: dict[str, torch.Tensor]) -> None:
        """Raise unless every mask removes whole structures (rows and columns that agree)."""
        for layer in self.layers:
            o = masks[f"{layer.names['o']}.weight"]
            cols = o.any(0)
            if not bool((o == cols[None, :]).all()):
                raise AssertionError(f"layer {layer.index}: attention output columns are partly pruned")
            per_head = cols.reshape(layer.heads, layer.head_dim)
            if not bool((per_head == per_head[:, :1]).all()):
                raise AssertionError(f"layer {layer.index}: a head is partly pruned")
            for role in ("q", "k", "v"):
                if not bool((masks[f"{layer.names[role]}.weight"] == cols[:, None]).all()):
                    raise AssertionError(f"layer {layer.index}: {role} rows do not match the kept heads")
            f = masks[f"{layer.names['f']}.weight"]
            n = f.any(0)
            if not bool((f == n[None, :]).all()) or not bool((masks[f"{layer.names['i']}.weight"] == n[:, None]).all()):
                raise AssertionError(f"layer {layer.index}: FFN neurons are partly pruned")


def counts(kept: dict[str, list[list[int]]]) -> dict[str, list[int]]:
    return {"heads": [len(h) for h in kept["heads"]], "ffn": [len(f) for f in kept["ffn"]]}


# -- the compact model --------------------------------------------------------------------------


class Bias(nn.Module):
    """What is left of a Linear whose inputs are all gone: its bias."""

    def __init__(self, bias: torch.Tensor):
        super().__init__()
        self.bias = nn.Parameter(bias.detach().clone())


class ResidualBias(nn.Module):
    """A BertSelfOutput/BertOutput with no inputs left: LayerNorm(bias + residual)."""

    def __init__(self, output: nn.Module):
        super().__init__()
        self.dense = Bias(output.dense.bias)
        self.LayerNorm = output.LayerNorm
        self.dropout = output.dropout

    def forward(self, hidden_states, input_tensor):
        return self.LayerNorm(self.dropout(self.dense.bias) + input_tensor)


class EmptyAttention(nn.Module):
    """An attention block with every head removed."""

    def __init__(self, attention: nn.Module):
        super().__init__()
        self.output = ResidualBias(attention.output)

    def forward(self, hidden_states, *args, **kwargs):
        return (self.output(None, hidden_states),)


class EmptyIntermediate(nn.Module):
    """An FFN with every neuron removed computes nothing before its output's bias."""

    def forward(self, hidden_states):
        return hidden_states


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    from .masks import _encoder

    return _encoder(model).layer


@torch.no_grad()
def compact(model: nn.Module, kept: dict[str, list[list[int]]]) -> nn.Module:
    """Remove, in place, every head and FFN neuron not in `kept` (layer by layer); a module
    with none left becomes its bias. Records the widths in the config."""
    from transformers.pytorch_utils import prune_linear_layer

    layers = encoder_layers(model)
    n_heads = model.config.num_attention_heads
    pruned_heads = {}
    for i, (layer, heads, neurons) in enumerate(zip(layers, kept["heads"], kept["ffn"])):
        gone = sorted(set(range(n_heads)) - set(heads))
        if not heads:
            layer.attention = EmptyAttention(layer.attention)
        elif gone:
            layer.attention.prune_heads(gone)
            pruned_heads[i] = gone
        if not neurons:
            layer.intermediate = EmptyIntermediate()
            layer.output = ResidualBias(layer.output)
        elif len(neurons) < layer.intermediate.dense.out_features:
            idx = torch.tensor(sorted(neurons), dtype=torch.long)
            layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, idx, dim=0)
            layer.output.dense = prune_linear_layer(layer.output.dense, idx, dim=1)
    c = counts(kept)
    model.config.pruned_heads = pruned_heads
    model.config.p2d_structure = c
    widths = set(c["ffn"])
    if len(widths) == 1 and 0 not in widths and 0 not in c["heads"]:
        model.config.intermediate_size = widths.pop()  # plain transformers loads it as it is
    return model


@torch.no_grad()
def shape(model: nn.Module, structure: dict[str, list[int]]) -> nn.Module:
    """Give a freshly built full-width model (its heads already pruned by `config.pruned_heads`)
    the FFN widths and empty modules of `structure`, ready for the compact weights."""
    layers = encoder_layers(model)
    for layer, heads, width in zip(layers, structure["heads"], structure["ffn"]):
        if heads == 0:
            layer.attention = EmptyAttention(layer.attention)
        if width == 0:
            layer.intermediate = EmptyIntermediate()
            layer.output = ResidualBias(layer.output)
        elif width != layer.intermediate.dense.out_features:
            d_in, d_out = layer.intermediate.dense.in_features, layer.output.dense.out_features
            layer.intermediate.dense = nn.Linear(d_in, width)
            layer.output.dense = nn.Linear(width, d_out)
    return model


def widths_of(model: nn.Module) -> dict[str, list[int]]:
    """Heads and FFN width of every encoder layer as the model is (compact or not)."""
    heads, ffn = [], []
    for layer in encoder_layers(model):
        att = layer.attention
        heads.append(0 if isinstance(att, EmptyAttention) else att.self.num_attention_heads)
        ffn.append(0 if isinstance(layer.intermediate, EmptyIntermediate) else layer.intermediate.dense.out_features)
    return {"heads": heads, "ffn": ffn}
