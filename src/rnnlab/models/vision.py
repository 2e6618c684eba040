"""A small convolutional image encoder, trained end to end with the decoder that reads it.

torchvision is not a dependency (and ImageNet weights cannot be fetched here), so the encoder is a
plain VGG-style stack (Simonyan & Zisserman 2015): ``blocks`` stages of two 3x3 convolutions with
ReLU, each stage but the last followed by 2x2 max pooling, channels doubling per stage::

    image (B, 3, S, S) uint8 + 2 coordinate channels (y, x in [-1, 1]; CoordConv, Liu et al.
    2018, so features know where they are: "left of" and "above" are about position)
      -> [conv3x3 ReLU conv3x3 ReLU pool] x (blocks - 1) -> conv3x3 ReLU conv3x3 ReLU
      -> grid (B, C, S', S'), S' = S / 2^(blocks-1)
    grid -> (B, K, C) annotation vectors a_1..a_K (K = S'^2), the locations soft attention
            reads (Xu et al. 2015)
    grid -> flatten (B, C*K) -> Linear -> ReLU -> v (B, F), the image feature the decoder is
            conditioned on (Vinyals et al. 2015; the lecture's ``W_ih v``); flattening, as VGG's
            fully connected layers do, keeps the layout that a mean over locations would lose

Group normalisation (Wu & He 2018) after each convolution keeps training stable at the small
batches a CPU affords and behaves the same in train and eval mode, unlike batch normalisation.
Pixels are scaled to [-1, 1] inside ``forward``, so callers pass the uint8 images as read.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SmallCNN(nn.Module):
    """Image -> (feature v (B, F), annotation grid (B, K, C)).

    Args:
        channels: channels of the first stage (doubled at each later stage).
        blocks: number of stages (pooling happens blocks - 1 times).
        feature_size: F, the size of the pooled feature v.
    """

    def __init__(
        self, channels: int = 32, blocks: int = 3, feature_size: int = 128, image_size: int = 32
    ) -> None:
        super().__init__()
        if channels < 1 or blocks < 1 or feature_size < 1:
            raise ValueError(
                f"SmallCNN: channels, blocks and feature_size must be >= 1, got "
                f"{channels}, {blocks}, {feature_size}"
            )
        if image_size % 2 ** (blocks - 1):
            raise ValueError(
                f"SmallCNN: image_size {image_size} must be divisible by 2^(blocks-1) = "
                f"{2 ** (blocks - 1)}"
            )
        layers: list[nn.Module] = []
        c_in = 5  # RGB + the two coordinate channels
        for b in range(blocks):
            c_out = channels * 2**b
            for _ in range(2):
                layers += [
                    nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                    nn.GroupNorm(min(8, c_out), c_out),
                    nn.ReLU(inplace=True),
                ]
                c_in = c_out
            if b < blocks - 1:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.grid_size = c_in  # C: channels of an annotation vector
        self.feature_size = feature_size
        self.blocks = blocks
        self.image_size = image_size
        self.locations = grid_locations(image_size, blocks)  # K
        self.project = nn.Sequential(
            nn.Linear(c_in * self.locations, feature_size), nn.ReLU(inplace=True)
        )
        side = torch.linspace(-1.0, 1.0, image_size)
        coords = torch.stack(torch.meshgrid(side, side, indexing="ij"))  # (2, S, S): y, x
        self.register_buffer("coords", coords, persistent=False)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images uint8 or float in [0, 255], (B, 3, S, S) -> v (B, F), grid (B, K, C)."""
        S = self.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, S, S):
            raise ValueError(f"images: expected (B, 3, {S}, {S}), got {tuple(images.shape)}")
        x = images.float() / 127.5 - 1.0
        x = torch.cat([x, self.coords.expand(x.shape[0], -1, -1, -1)], dim=1)  # (B, 5, S, S)
        grid = self.features(x)  # (B, C, S', S')
        v = self.project(grid.flatten(1))  # (B, F)
        return v, grid.flatten(2).transpose(1, 2)  # (B, F), (B, K, C)


def grid_locations(image_size: int, blocks: int) -> int:
    """K, the number of grid locations the encoder gives an image of side ``image_size``."""
    side = image_size
    for _ in range(blocks - 1):
        side //= 2
    return side * side
