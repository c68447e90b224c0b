"""Bridges between a frozen dense model and a weight-sparse model (the paper's section 3.3, Appendix A.3-A.4).

At every residual site (`SparseTransformer.residual_sites`: after the embedding, after each attention and each
MLP sub-layer) a bridge holds an encoder dense -> sparse (a linear map followed by AbsTopK, with the sparse
model's `afrac`) and a decoder sparse -> dense (a linear map): in effect a sparse autoencoder of the dense
residual stream whose latents are the sparse model's residual channels.

The sparse model and the bridges train together (`BridgeObjective`, passed to `circuitlab.train.train`) on
the sparse model's next-token loss, the KL from the dense model's outputs to the sparse model's, a normalised
MSE for each encoder and decoder, and the KL of hybrid forward passes that switch model at one site through
a bridge (dense up to the site, encode, finish in the sparse model; and the reverse). Every KL is
KL(dense || other), as in the paper; every loss term is a mean over sites (the paper sums them).

    pair = load_bridged_pair("data/bridges")          # dense, sparse, bridges; checked to belong together
    bridge_report(pair, tokens)                       # per-site NMSE and hybrid-pass KL
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from circuitlab import checkpoint, settings
from circuitlab.abstopk import AbsTopK
from circuitlab.checkpoint import CheckpointError
from circuitlab.model import SparseTransformer

FORMAT = "circuitlab.Bridges"
WEIGHTS_FILE = "bridges.safetensors"
CONFIG_FILE = "bridges.json"
REPORT_FILE = "bridge_report.csv"


@dataclass
class BridgeConfig:
    """Where the frozen dense model is, and the weights of the bridge loss terms (the `bridges:` section of
    configs/bridges.yaml). `hybrid_sites` hybrid passes per direction are drawn at random each step (None: all
    sites), an unbiased estimate of the mean over sites at a fraction of the cost."""

    dense: str = "data/checkpoints/dense"  # the frozen dense model's checkpoint folder
    lm_coef: float = 1.0  # the sparse model's next-token loss
    kl_coef: float = 1.0  # KL(dense outputs || sparse outputs)
    nmse_coef: float = 1.0  # encoder and decoder NMSE, each a mean over sites
    hybrid_coef: float = 1.0  # KL(dense outputs || hybrid outputs), each direction a mean over sites
    hybrid_sites: int | None = None
    lr_scale: float = 0.1  # the bridges' learning rate as a multiple of the sparse model's
    fit_batches: int = 4  # batches for the least-squares fit that starts the bridges

    def __post_init__(self) -> None:
        settings.coerce_fields(self)
        coefficient = settings.at_least(0)
        settings.check(
            self,
            {
                **dict.fromkeys(("lm_coef", "kl_coef", "nmse_coef", "hybrid_coef"), coefficient),
                "hybrid_sites": settings.at_least(1),
                "fit_batches": settings.at_least(1),
                "lr_scale": settings.above(0),
            },
        )


class Bridges(nn.Module):
    """One encoder (Linear + AbsTopK) and one decoder (Linear) per residual site; site `i` of both models is
    `sites[i]`. `decoders[i].weight[:, c]` is the dense direction of the sparse residual channel `c`."""

    def __init__(self, sites: Sequence[str], d_dense: int, d_sparse: int, afrac: float | None):
        super().__init__()
        self.sites, self.d_dense, self.d_sparse, self.afrac = list(sites), d_dense, d_sparse, afrac
        self.encoders = nn.ModuleList(nn.Linear(d_dense, d_sparse) for _ in self.sites)
        self.decoders = nn.ModuleList(nn.Linear(d_sparse, d_dense) for _ in self.sites)
        self.topk = AbsTopK(d_sparse, afrac)

    @classmethod
    def between(cls, dense: SparseTransformer, sparse: SparseTransformer) -> Bridges:
        """Bridges shaped for this pair of models (the same residual sites, AbsTopK as the sparse model's)."""
        if dense.residual_sites != sparse.residual_sites:
            raise ValueError(
                f"The dense model has {dense.cfg.n_layers} layers and the sparse model {sparse.cfg.n_layers}: "
                "bridges join models of the same depth, site by site."
            )
        return cls(dense.residual_sites, dense.cfg.d_model, sparse.cfg.d_model, sparse.cfg.afrac)

    def site_index(self, site: str | int) -> int:
        if isinstance(site, int) and 0 <= site < len(self.sites):
            return site
        if site in self.sites:
            return self.sites.index(str(site))
        raise ValueError(
            f"site={site!r} is not a bridged site; choose an index below {len(self.sites)} or one of {self.sites}"
        )

    def encode(self, site: str | int, resid_dense: Tensor) -> Tensor:
        """The sparse residual stream predicted from the dense one at `site` (exactly AbsTopK's k nonzeros)."""
        return self.topk(self.encoders[self.site_index(site)](resid_dense))

    def decode(self, site: str | int, resid_sparse: Tensor) -> Tensor:
        """The dense residual stream predicted from the sparse one at `site`."""
        return self.decoders[self.site_index(site)](resid_sparse)

    def decoder_matrix(self, site: str | int) -> Tensor:
        """[d_dense, d_sparse]: column `c` is the dense residual direction of the sparse residual channel `c`."""
        return cast(nn.Linear, self.decoders[self.site_index(site)]).weight

    @torch.no_grad()
    def fit_least_squares(self, dense_resids: Sequence[Tensor], sparse_resids: Sequence[Tensor]) -> None:
        """Start every encoder and decoder at the least-squares linear map between the two models' residual
        streams (one [tokens, d] pair per site), so training refines a map instead of searching for one."""
        for index, (dense, sparse) in enumerate(zip(dense_resids, sparse_resids, strict=True)):
            maps = ((self.encoders[index], dense, sparse), (self.decoders[index], sparse, dense))
            for layer, source, target in cast(tuple[tuple[nn.Linear, Tensor, Tensor], ...], maps):
                inputs = F.pad(source.reshape(-1, source.shape[-1]).double(), (0, 1), value=1.0)
                solution = torch.linalg.lstsq(inputs, target.reshape(-1, target.shape[-1]).double()).solution
                layer.weight.copy_(solution[:-1].T)
                layer.bias.copy_(solution[-1])

    # ------------------------------------------------------------------ files

    def description(self) -> dict:
        return {
            "format": FORMAT,
            "sites": self.sites,
            "d_dense": self.d_dense,
            "d_sparse": self.d_sparse,
            "afrac": self.afrac,
        }

    def save(self, directory: str | Path, dense_dir: str | Path, sparse_dir: str | Path) -> Path:
        """Write `bridges.safetensors` and `bridges.json` into `directory`. The JSON names the two checkpoints the
        bridges join (paths relative to `directory`) and the sha256 of their weights, so that loading refuses
        bridges put beside other models."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        models = {
            role: {
                "path": os.path.relpath(Path(folder).resolve(), directory.resolve()),
                "sha256": weights_sha256(folder),
            }
            for role, folder in (("dense", dense_dir), ("sparse", sparse_dir))
        }
        info = {**self.description(), **models}
        state = {name: tensor.detach().contiguous() for name, tensor in self.state_dict().items()}
        metadata = {"format": FORMAT, "description": json.dumps(self.description(), sort_keys=True)}
        checkpoint.write_text_atomic(directory / CONFIG_FILE, json.dumps(info, indent=2) + "\n")
        checkpoint.write_atomic(directory / WEIGHTS_FILE, lambda path: save_file(state, path, metadata=metadata))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Bridges:
        """Bridges written by `save`, after checking that the JSON and the weights belong together."""
        directory = Path(directory)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory / name} is missing: {directory} holds no saved bridges.")
        info = settings.read_mapping(directory / CONFIG_FILE)
        if info.get("format") != FORMAT:
            raise CheckpointError(
                f"{directory / CONFIG_FILE} is not a bridges file (format {info.get('format')!r}, expected {FORMAT!r})."
            )
        try:
            bridges = cls(info["sites"], int(info["d_dense"]), int(info["d_sparse"]), info["afrac"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(
                f"{directory / CONFIG_FILE} lacks or garbles a field ({err}); re-save the bridges."
            ) from None
        weights = directory / WEIGHTS_FILE
        state, metadata = checkpoint.read_tensors(weights, "re-save the bridges")
        saved = json.loads(metadata.get("description", "{}"))
        changed = checkpoint.differences(saved, bridges.description(), CONFIG_FILE)
        if changed:
            raise CheckpointError(
                f"{directory / CONFIG_FILE} does not belong to {weights}: {'; '.join(changed)}. Put back the "
                "bridges.json saved with these weights."
            )
        checkpoint.check_state_dict(bridges.state_dict(), state, source=str(weights))
        bridges.load_state_dict(state)
        return bridges


def weights_sha256(checkpoint_dir: str | Path) -> str:
    return checkpoint.sha256(Path(checkpoint_dir) / checkpoint.WEIGHTS_FILE)


@dataclass
class BridgedPair:
    """A frozen dense model, the sparse model trained beside it, and the bridges between them."""

    dense: SparseTransformer
    sparse: SparseTransformer
    bridges: Bridges

    def __post_init__(self) -> None:
        expected = Bridges.between(self.dense, self.sparse).description()
        changed = checkpoint.differences(self.bridges.description(), expected, "these models")
        if changed:
            raise ValueError(f"The bridges do not fit these models: {'; '.join(changed)}.")


def load_bridged_pair(directory: str | Path) -> BridgedPair:
    """The pair a `make_bridges` run wrote: the sparse model is the folder's checkpoint, the dense model the one
    `bridges.json` names; refused, naming the file, when either model's weights are not the ones bridged."""
    directory = Path(directory)
    bridges = Bridges.load(directory)
    info = settings.read_mapping(directory / CONFIG_FILE)
    models = {}
    for role in ("dense", "sparse"):
        folder = (directory / info[role]["path"]).resolve()
        if weights_sha256(folder) != info[role]["sha256"]:
            raise CheckpointError(
                f"{folder / checkpoint.WEIGHTS_FILE} is not the {role} model these bridges were trained with "
                f"({directory / CONFIG_FILE} records sha256 {info[role]['sha256'][:16]}...); retrain the bridges or "
                "restore that checkpoint."
            )
        models[role] = SparseTransformer.from_pretrained(folder).eval()
    return BridgedPair(models["dense"], models["sparse"], bridges)


# ---------------------------------------------------------------------------------------------- loss terms


def residual_stream(model: SparseTransformer, tokens: Tensor) -> tuple[list[Tensor], Tensor]:
    """The residual stream at every site (`model.residual_sites`) and the logits, in one forward pass."""
    sites = model.residual_sites
    resids = [model.embed_tokens(tokens)]
    for start, stop in zip(sites, sites[1:], strict=False):
        resids.append(model(resids[-1], start_at=start, stop_at=stop))
    return resids, model.unembed_resid(resids[-1], tokens)


def nmse(prediction: Tensor, target: Tensor) -> Tensor:
    """Normalised MSE: squared error over the target's variance around its mean over tokens (0 is perfect, 1
    is no better than predicting the mean). The normaliser is not differentiated, so the loss cannot fall by
    spreading the target out."""
    target_flat = target.reshape(-1, target.shape[-1])
    variance = (target_flat - target_flat.mean(0)).pow(2).sum(-1).mean().detach()
    return (prediction - target).pow(2).sum(-1).mean() / variance.clamp_min(1e-12)


def kl_from(reference_logits: Tensor, logits: Tensor) -> Tensor:
    """KL(reference || other) of the next-token distributions, mean over positions (nats)."""
    reference = reference_logits.log_softmax(-1)
    return (reference.exp() * (reference - logits.log_softmax(-1))).sum(-1).mean()


def hybrid_logits(pair: BridgedPair, tokens: Tensor, site: str | int, start: str) -> Tensor:
    """Logits of a hybrid pass that runs `start` ("dense" or "sparse") up to `site`, crosses the bridge there and
    finishes in the other model."""
    if start not in ("dense", "sparse"):
        raise ValueError(f"start={start!r}; use 'dense' (dense, then sparse) or 'sparse' (sparse, then dense)")
    index = pair.bridges.site_index(site)
    name = pair.bridges.sites[index]
    first, second = (pair.dense, pair.sparse) if start == "dense" else (pair.sparse, pair.dense)
    resid = first(tokens, stop_at=name)
    crossed = pair.bridges.encode(index, resid) if start == "dense" else pair.bridges.decode(index, resid)
    return second(crossed, start_at=name, tokens=tokens)


class BridgeObjective:
    """The loss that trains a sparse model and its bridges to a frozen dense model (`circuitlab.train.train`'s
    `objective`): the terms of the module docstring, weighted by a `BridgeConfig`."""

    def __init__(self, dense: SparseTransformer, bridges: Bridges, cfg: BridgeConfig):
        self.dense = dense.eval().requires_grad_(False)
        self.trainable = bridges
        self.cfg = cfg
        self.lr_scale = cfg.lr_scale
        self.last_terms: dict[str, float] = {}

    def loss(self, model: SparseTransformer, tokens: Tensor) -> Tensor:
        terms = self.terms(model, tokens)
        self.last_terms = {name: value.item() for name, value in terms.items()}
        cfg = self.cfg
        return (
            cfg.lm_coef * terms["lm"]
            + cfg.kl_coef * terms["kl"]
            + cfg.nmse_coef * (terms["nmse_encoder"] + terms["nmse_decoder"])
            + cfg.hybrid_coef * (terms["hybrid_dense_to_sparse"] + terms["hybrid_sparse_to_dense"])
        )

    def terms(self, model: SparseTransformer, tokens: Tensor) -> dict[str, Tensor]:
        """Every loss term, unweighted, on one batch."""
        bridges = self.trainable
        with torch.no_grad():
            dense_resids, dense_logits = residual_stream(self.dense, tokens)
        sparse_resids, sparse_logits = residual_stream(model, tokens)
        n_sites = len(bridges.sites)
        chosen = list(range(n_sites))
        if self.cfg.hybrid_sites is not None and self.cfg.hybrid_sites < n_sites:
            chosen = torch.randperm(n_sites)[: self.cfg.hybrid_sites].tolist()
        encoded = [bridges.encode(i, resid) for i, resid in enumerate(dense_resids)]
        decoded = [bridges.decode(i, resid) for i, resid in enumerate(sparse_resids)]
        to_sparse = [kl_from(dense_logits, model(encoded[i], start_at=bridges.sites[i], tokens=tokens)) for i in chosen]
        to_dense = [
            kl_from(dense_logits, self.dense(decoded[i], start_at=bridges.sites[i], tokens=tokens)) for i in chosen
        ]
        return {
            "lm": model.next_token_loss(sparse_logits, tokens),
            "kl": kl_from(dense_logits, sparse_logits),
            "nmse_encoder": torch.stack([nmse(e, s) for e, s in zip(encoded, sparse_resids, strict=True)]).mean(),
            "nmse_decoder": torch.stack([nmse(d, h) for d, h in zip(decoded, dense_resids, strict=True)]).mean(),
            "hybrid_dense_to_sparse": torch.stack(to_sparse).mean(),
            "hybrid_sparse_to_dense": torch.stack(to_dense).mean(),
        }


@torch.no_grad()
def fit_bridges(dense: SparseTransformer, sparse: SparseTransformer, batches: Sequence[Tensor]) -> Bridges:
    """New bridges between two models, each map started at its least-squares fit on `batches` of tokens."""
    bridges = Bridges.between(dense, sparse)
    dense_resids = [torch.cat(parts) for parts in zip(*(residual_stream(dense, b)[0] for b in batches), strict=True)]
    sparse_resids = [torch.cat(parts) for parts in zip(*(residual_stream(sparse, b)[0] for b in batches), strict=True)]
    bridges.fit_least_squares(dense_resids, sparse_resids)
    return bridges


@torch.no_grad()
def bridge_report(pair: BridgedPair, tokens: Tensor) -> pd.DataFrame:
    """Per residual site: the encoder's and decoder's NMSE and the KL(dense || hybrid) of the pass that switches
    model there, each way; `kl_sparse` (the same in every row) is KL(dense || sparse) of the two whole models,
    for scale."""
    dense_resids, dense_logits = residual_stream(pair.dense, tokens)
    sparse_resids, sparse_logits = residual_stream(pair.sparse, tokens)
    rows = []
    for index, site in enumerate(pair.bridges.sites):  # each hybrid pass starts from the streams computed above
        encoded = pair.bridges.encode(index, dense_resids[index])
        decoded = pair.bridges.decode(index, sparse_resids[index])
        rows.append(
            {
                "site": site,
                "nmse_encoder": nmse(encoded, sparse_resids[index]).item(),
                "nmse_decoder": nmse(decoded, dense_resids[index]).item(),
                "kl_dense_then_sparse": kl_from(
                    dense_logits, pair.sparse(encoded, start_at=site, tokens=tokens)
                ).item(),
                "kl_sparse_then_dense": kl_from(dense_logits, pair.dense(decoded, start_at=site, tokens=tokens)).item(),
            }
        )
    table = pd.DataFrame(rows).set_index("site")
    table["kl_sparse"] = kl_from(dense_logits, sparse_logits).item()
    return table
