"""Small torch networks for the two learned models (issues 4 and 5).

* :class:`L3HeatmapNet` -- L3 inferior-endplate level from a coronal and a sagittal maximum
  intensity projection (MIP) of the volume, as in the paper and sarcopenia-ai. Each view is a
  ``(z, lateral)`` image; a 2D encoder pools only the lateral axis, the two views' features are
  concatenated per z row and a dilated 1D convolution stack (receptive field ~ 500 mm, enough
  to count vertebrae from the sacrum or the last ribs) gives one logit per z row. A softmax
  over z is the heatmap; its peak is the level and the probability mass near the peak the
  confidence.
* :class:`TissueUNet` -- a 2D U-Net giving five logits per pixel (0 background, then
  :class:`~l3node.analysis.tissues.Tissue` 1..4) on one axial slice resampled to a fixed
  pixel size.

Both are fully convolutional, so any z length (L3) and any slice size that is a multiple of
``TissueUNet.stride`` (segmentation) is accepted. Builders take the ``architecture`` dict
stored in the weights manifest so that a manifest alone says how to rebuild the net.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


def _conv_block(c_in: int, c_out: int, kernel: tuple[int, int] | int = 3) -> nn.Sequential:
    pad = tuple(k // 2 for k in kernel) if isinstance(kernel, tuple) else kernel // 2
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, padding=pad, bias=False),
        nn.GroupNorm(min(4, c_out), c_out),
        nn.SiLU(inplace=True),
    )


class _ViewEncoder(nn.Module):
    """``(B, 1, Z, W)`` -> ``(B, C, Z)``: convolutions in 2D, pooling along the lateral axis only."""

    def __init__(self, channels: tuple[int, ...]):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for c in channels:
            layers += [_conv_block(c_in, c), _conv_block(c, c), nn.MaxPool2d((1, 2))]
            c_in = c
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.body(x)
        # Max over the lateral axis: where in the width a vertebra sits does not matter.
        return features.amax(dim=3)


class L3HeatmapNet(nn.Module):
    """Per-z-row L3 logits from a coronal and a sagittal MIP.

    Parameters
    ----------
    channels:
        Channels of the per-view 2D encoder stages (each stage halves the lateral axis).
    z_channels:
        Channels of the 1D z stack.
    dilations:
        Dilations of the 1D z convolutions (kernel 3); their sum sets the receptive field.
    """

    def __init__(self, channels: tuple[int, ...] = (8, 16, 24), z_channels: int = 32,
                 dilations: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 1)):
        super().__init__()
        self.coronal = _ViewEncoder(tuple(channels))
        self.sagittal = _ViewEncoder(tuple(channels))
        c = 2 * channels[-1]
        z_layers: list[nn.Module] = [nn.Conv1d(c, z_channels, 1)]
        for d in dilations:
            z_layers += [nn.Conv1d(z_channels, z_channels, 3, padding=d, dilation=d),
                         nn.GroupNorm(4, z_channels), nn.SiLU(inplace=True)]
        self.z_stack = nn.Sequential(*z_layers)
        self.head = nn.Conv1d(z_channels, 1, 1)

    def forward(self, coronal: torch.Tensor, sagittal: torch.Tensor) -> torch.Tensor:
        """``(B, 1, Z, W)`` twice -> logits ``(B, Z)``."""
        features = torch.cat([self.coronal(coronal), self.sagittal(sagittal)], dim=1)
        return self.head(self.z_stack(features)).squeeze(1)


class TissueUNet(nn.Module):
    """A small 2D U-Net: ``(B, C_in, H, W)`` -> logits ``(B, n_classes, H, W)``.

    ``H`` and ``W`` must be multiples of :attr:`stride` (``2 ** len(channels - 1)``).
    """

    def __init__(self, in_channels: int = 2, n_classes: int = 5, channels: tuple[int, ...] = (12, 24, 48, 64)):
        super().__init__()
        self.down = nn.ModuleList()
        c_in = in_channels
        for c in channels:
            self.down.append(nn.Sequential(_conv_block(c_in, c), _conv_block(c, c)))
            c_in = c
        self.up = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for c_skip, c_deep in zip(reversed(channels[:-1]), reversed(channels[1:])):
            self.up.append(nn.ConvTranspose2d(c_deep, c_skip, 2, stride=2))
            self.fuse.append(nn.Sequential(_conv_block(2 * c_skip, c_skip), _conv_block(c_skip, c_skip)))
        self.head = nn.Conv2d(channels[0], n_classes, 1)
        self.stride = 2 ** (len(channels) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < len(self.down) - 1:
                skips.append(x)
                x = F.max_pool2d(x, 2)
        for up, fuse, skip in zip(self.up, self.fuse, reversed(skips)):
            x = fuse(torch.cat([up(x), skip], dim=1))
        return self.head(x)


def build_model(task: str, architecture: dict[str, Any]) -> nn.Module:
    """Build the net of ``task`` (``"l3"`` or ``"seg"``) from a manifest's ``architecture``.

    Raises
    ------
    ValueError
        For an unknown task or architecture class.
    """
    arch = dict(architecture)
    kind = arch.pop("class", None)
    if task == "l3" and kind == "L3HeatmapNet":
        return L3HeatmapNet(tuple(arch["channels"]), int(arch["z_channels"]), tuple(arch["dilations"]))
    if task == "seg" and kind == "TissueUNet":
        return TissueUNet(int(arch["in_channels"]), int(arch["n_classes"]), tuple(arch["channels"]))
    raise ValueError(f"no network {kind!r} for task {task!r}")


def architecture_of(model: nn.Module) -> dict[str, Any]:
    """The ``architecture`` manifest entry that rebuilds ``model`` with :func:`build_model`."""
    if isinstance(model, L3HeatmapNet):
        enc = [m for m in model.coronal.body if isinstance(m, nn.Sequential)]
        channels = [block[0].out_channels for block in enc[::2]]
        convs = [m for m in model.z_stack if isinstance(m, nn.Conv1d)]
        return {"class": "L3HeatmapNet", "channels": channels, "z_channels": convs[0].out_channels,
                "dilations": [m.dilation[0] for m in convs[1:]]}
    if isinstance(model, TissueUNet):
        return {"class": "TissueUNet", "in_channels": model.down[0][0][0].in_channels,
                "n_classes": model.head.out_channels, "channels": [b[0][0].out_channels for b in model.down],
                "stride": model.stride}
    raise ValueError(f"unknown model class {type(model).__name__}")


def parameter_count(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))
