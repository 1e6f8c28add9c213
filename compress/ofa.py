"""The once-for-all supernet around a BERT classifier (PaddleSlim OFA: widths, and depths).

``OfaSupernet`` wraps PaddleSlim's ``Convert`` + ``OFA`` so callers never touch its
quirks: configs per subnet are computed once and deep-copied (``dynabert_config``
returns dicts shared with the supernet's own search space, so a config computed
earlier silently changes when another width is computed later: the "every width
has the same accuracy" bug), and every forward runs inside the compat patches.

Depths below 1.0 go through PaddleSlim's own depth search space (``RunConfig(
elastic_depth=...)``: ``dynabert_config`` records the depth, ``OFA.forward`` passes it
on), and the compat patches run the layers that depth keeps (``core.subnet.Depth``).
With depth 1.0 alone the supernet is built exactly as a width-only one.
"""
from __future__ import annotations

import copy
from typing import Iterable

import numpy as np
import paddle

from ofaserve.compress import paddleslim_compat as compat
from ofaserve.core.errors import OfaserveError
from ofaserve.core.subnet import Depth, Subnet, check_depths, grid
from ofaserve.core.width import Width
from ofaserve.compress.bert import build_classifier
from ofaserve.compress.submodel import keep_layers, sub_config_from_state


class OfaSupernet:
    """A BERT classifier converted to an OFA supernet over ``width_mult_list`` x
    ``depth_mult_list``.

    ``model`` is a plain PaddleNLP ``BertForSequenceClassification`` whose weights are
    kept (Convert re-creates the layers; we copy the weights back).
    """

    def __init__(self, model, width_mult_list: Iterable[float], depth_mult_list: Iterable[float] = (1.0,)):
        from paddleslim.nas.ofa import OFA, RunConfig
        from paddleslim.nas.ofa import utils as ofa_utils

        self.widths = sorted({float(w) for w in width_mult_list}, reverse=True)
        if not self.widths or self.widths[0] != 1.0:
            raise OfaserveError(f"width_mult_list must include 1.0 (got {self.widths})")
        if any(not 0.0 < w <= 1.0 for w in self.widths):
            raise OfaserveError(f"widths must be in (0, 1] (got {self.widths})")
        self.config = dict(model.config.to_dict()) if hasattr(model, "config") else {}
        self.num_layers = int(self.config.get("num_hidden_layers") or len(model.bert.encoder.layers))
        self.depths = [d.value for d in check_depths(depth_mult_list, self.num_layers)]
        weights = {k: v.numpy() for k, v in model.state_dict().items()}
        self.model = compat.supernet(self.widths)(model)
        ofa_utils.set_state_dict(self.model, weights)
        # depth joins PaddleSlim's search space only when asked for: a width-only supernet is built as before
        elastic_depth = RunConfig(elastic_depth=self.depths) if self.depths != [1.0] else None
        self.ofa = OFA(self.model, run_config=elastic_depth, elastic_order=["width"])
        self.subnets = grid(self.widths, self.depths)
        self._configs = {(s.width.value, s.depth.value): copy.deepcopy(
            ofa_utils.dynabert_config(self.ofa, s.width.value, s.depth.value)) for s in self.subnets}
        self.width, self.depth = 1.0, 1.0
        self.set_width(1.0)

    # -- subnet selection -----------------------------------------------------------
    def check_width(self, width: Width | float) -> float:
        """The trained width ``width`` names (within ``Width``'s tolerance)."""
        return Width.parse(width).among(self.widths).value

    def check_depth(self, depth: Depth | float) -> float:
        """The trained depth ``depth`` names (within the same tolerance)."""
        return Depth.parse(depth).among(self.depths).value

    def check_subnet(self, width: Width | float, depth: Depth | float = 1.0) -> Subnet:
        return Subnet.of(self.check_width(width), self.check_depth(depth))

    def kept_layers(self, depth: Depth | float = 1.0) -> list[int]:
        """The encoder layers a trained depth runs."""
        return Depth(self.check_depth(depth)).layers(self.num_layers)

    def set_width(self, width: float) -> None:
        self.set_subnet(width, 1.0)

    def set_subnet(self, width: float, depth: float = 1.0) -> None:
        sub = self.check_subnet(width, depth)
        self.width, self.depth = sub.width.value, sub.depth.value
        cfg = copy.deepcopy(self._configs[(self.width, self.depth)])
        self.ofa.set_net_config(cfg)
        # Blocks read the ofa's current config: keep it right for direct model calls too.
        self.ofa.current_config = cfg

    def net_config(self, width: float, depth: float = 1.0) -> dict:
        sub = self.check_subnet(width, depth)
        return copy.deepcopy(self._configs[(sub.width.value, sub.depth.value)])

    # -- forward ----------------------------------------------------------------------
    def __call__(self, input_ids, token_type_ids, head_mask=None):
        with compat.patched():
            return self.ofa(input_ids, token_type_ids, attention_mask=[None, head_mask])

    def logits_numpy(self, input_ids: np.ndarray, token_type_ids: np.ndarray, width: float,
                     depth: float = 1.0) -> np.ndarray:
        self.set_subnet(width, depth)
        was_training = self.model.training
        self.model.eval()
        with paddle.no_grad():
            out = self(paddle.to_tensor(input_ids), paddle.to_tensor(token_type_ids)).numpy()
        if was_training:
            self.model.train()
        return out

    def train(self):
        self.model.train()

    def eval(self):
        self.model.eval()

    def parameters(self):
        return self.model.parameters()

    # -- weights ----------------------------------------------------------------------
    def plain_state_dict(self) -> dict[str, np.ndarray]:
        """Full-width weights under PaddleNLP's plain names (no ``.fn``): loadable into
        a plain ``BertForSequenceClassification``; every narrower width is a prefix slice."""
        return {k.replace(".fn.", "."): v.numpy() for k, v in self.model.state_dict().items()}

    def load_plain_state_dict(self, weights: dict) -> None:
        from paddleslim.nas.ofa import utils as ofa_utils
        ofa_utils.set_state_dict(self.model, weights)

    # -- one subnet as a plain model ---------------------------------------------------------
    def slice_subnet(self, width: float, depth: float = 1.0, config: dict | None = None,
                     state: dict[str, np.ndarray] | None = None) -> tuple[dict, dict[str, np.ndarray]]:
        """One (width, depth) as a plain model -> (sub model config, sliced weights):
        PaddleSlim's ``OFA.export`` of the width at full depth, then the layers the depth
        keeps (``submodel.keep_layers``: OFA.export slices widths, not depths).

        ``config``/``state``: the full-width classifier to slice (default: this supernet's
        own config and current weights). The width is cross-checked against the prefix
        rule training ran: the first int(width * heads) heads and the leading FFN neurons.
        """

        cfg, sliced = self.slice_width(width, config, state)
        depth = self.check_depth(depth)
        if depth == 1.0:
            return cfg, sliced
        return keep_layers(cfg, sliced, self.kept_layers(depth), depth)

    def slice_width(self, width: float, config: dict | None = None,
                    state: dict[str, np.ndarray] | None = None) -> tuple[dict, dict[str, np.ndarray]]:
        """PaddleSlim's ``OFA.export`` of one width at full depth -> (sub model config, sliced
        weights); see ``slice_subnet``."""
        import contextlib
        import io
        import warnings


        width = self.check_width(width)
        config = dict(config or self.config)
        state = self.plain_state_dict() if state is None else state
        origin = build_classifier(config)
        origin.set_state_dict(state)
        origin.eval()
        quiet = io.StringIO()  # paddleslim prints one line per parameter
        with compat.patched(), contextlib.redirect_stdout(quiet), warnings.catch_warnings():
            # OFA.export reloads the full-width state last; paddle warns (and skips) every sliced tensor
            warnings.filterwarnings("ignore", message="Skip loading for")
            sub = self.ofa.export(self.net_config(width), input_shapes=[[1, 8], [1, 8]],
                                  input_dtypes=["int64", "int64"], origin_model=origin)
        sliced = {k: v.numpy().astype(np.float32) for k, v in sub.state_dict().items()}
        cfg = sub_config_from_state(config, sliced, width)
        heads = int(config["num_attention_heads"])
        head_dim = int(config["hidden_size"]) // heads
        for i, layer in enumerate(cfg["layers"]):
            if layer["num_heads"] != int(heads * width):
                raise OfaserveError(f"layer {i}: OFA.export kept {layer['num_heads']} heads but training ran "
                                    f"int({heads}*{width}) = {int(heads * width)} (hidden {head_dim} per head)")
            p = f"bert.encoder.layers.{i}."
            for name in ("self_attn.q_proj.weight", "linear1.weight"):
                full, cut = state[p + name], sliced[p + name]
                if not np.array_equal(np.asarray(full)[:, : cut.shape[1]], cut):
                    raise OfaserveError(f"OFA.export's {p + name} is not the leading slice of the supernet")
        return cfg, sliced

    # -- importance reordering ------------------------------------------------------------
    def reorder_by_importance(self, batches: Iterable[tuple], loss_fct=None) -> dict[str, list]:
        """Sort heads and FFN neurons of every layer by importance (PaddleNLP's scores: the
        gradient of ``loss_fct(outputs, labels)``, the task's loss; default cross-entropy).

        Scored one batch at a time with gradients cleared in between: PaddleSlim's
        loop never clears them, so later batches would add running sums.
        """
        from paddlenlp.transformers.ofa_utils import compute_neuron_head_importance, reorder_neuron_head

        self.set_width(1.0)
        self.model.eval()  # dropout off: scores must be reproducible
        n_layers = int(self.config.get("num_hidden_layers"))
        n_heads = int(self.config.get("num_attention_heads"))
        heads, neurons = None, None
        with compat.patched():
            for ids, types, labels in batches:
                batch = [paddle.to_tensor(ids), paddle.to_tensor(types), paddle.to_tensor(labels)]
                h, n = compute_neuron_head_importance(self.model, [batch], num_layers=n_layers, num_heads=n_heads,
                                                      **({"loss_fct": loss_fct} if loss_fct else {}))
                self.model.clear_gradients()
                heads = h if heads is None else heads + h
                neurons = n if neurons is None else [a + b for a, b in zip(neurons, n)]
            if heads is None:
                raise OfaserveError("no batches to score head/neuron importance")
            reorder_neuron_head(self.model, heads, neurons)
        self.model.clear_gradients()
        return {"head_importance": heads.numpy().tolist(),
                "head_order": [np.argsort(-h, kind="stable").tolist() for h in heads.numpy()],
                "neuron_importance_mean": [float(x.mean()) for x in neurons]}
