"""The contract every semseg model follows.

``model(x)`` takes images ``(N, in_channels, H, W)`` and returns logits ``(N, C, H, W)``
at the input size, with no data-dependent Python branches, so it compiles and exports.
Every registered builder takes ``in_channels`` (default 3: RGB); RGB weights loaded into
a model with other counts are adapted in :func:`semseg.backbones.weights.adapt_input_conv`.

Auxiliary outputs, used only for training, come from one place:
``model.forward_train(x)`` returns ``{"out": logits, "aux": aux_logits}`` (``"aux"``
only for models with an auxiliary head) and ``model.aux_weight`` is the weight the
paper gives that loss (e.g. 0.4 for PSPNet). A model with several auxiliary heads (BiSeNet
V2's boosters) returns each under its own key and names them all, with their weights, in
``model.aux_weights``; the training loss adds ``weight x loss`` for each.
"""

from __future__ import annotations

import torch
from torch import nn


class SegmentationModel(nn.Module):
    """Base class: subclasses implement :meth:`forward_train`; ``aux_weight`` is 0 without an aux head."""

    aux_weight: float = 0.0

    @property
    def aux_weights(self) -> dict[str, float]:
        """``forward_train``'s auxiliary outputs and the weight of each one's loss (none without aux heads)."""
        return {"aux": self.aux_weight} if self.aux_weight else {}

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Main logits and, where the model has one, auxiliary-head logits; all at input size."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_train(x)["out"]
