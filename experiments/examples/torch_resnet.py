"""A small ResNet written in PyTorch, a model the package does not ship, for torch_resnet_batchnorm.toml.

`small_resnet(settings, input_shape)` returns a torch.nn.Module; the spec names it as
`model = "torch:./torch_resnet.py:small_resnet"` and the run wraps it in smoothnorm.torch.TorchNetwork. Three stages
of one basic block each (two 3x3 convs; a 1x1 conv on the shortcut where the shape changes), round(16, 32, 64 x
width) channels, global average pooling and a linear classifier. With settings["norm"] == "batch" every conv is
followed by a BatchNorm2d (and has no bias); with "none" there is no normalization at all. Convolutions start
from torchvision's ResNet initialization (Kaiming normal, fan-out).
"""

import torch
from torch import nn

NORMS = ("batch", "none")


def _norm(channels: int, batch_norm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batch_norm else nn.Identity()


class BasicBlock(nn.Module):
    """conv-norm-relu-conv-norm, plus the shortcut (identity, or a strided 1x1 conv and norm), then relu."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, batch_norm: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=not batch_norm)
        self.bn1 = _norm(out_channels, batch_norm)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=not batch_norm)
        self.bn2 = _norm(out_channels, batch_norm)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=not batch_norm),
                                          _norm(out_channels, batch_norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, ...], batch_norm: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=not batch_norm)
        self.bn = _norm(widths[0], batch_norm)
        blocks, channels = [], widths[0]
        for i, width in enumerate(widths):
            blocks.append(BasicBlock(channels, width, 1 if i == 0 else 2, batch_norm))
            channels = width
        self.stages = nn.Sequential(*blocks)
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                # torchvision's ResNet initialization: PyTorch's default conv init shrinks the signal by about
                # sqrt(3) per layer, and without BatchNorm the network then starts on a plateau it does not leave.
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stages(torch.relu(self.bn(self.conv(x))))
        return self.fc(out.mean(dim=(2, 3)))


def small_resnet(settings: dict, input_shape: tuple[int, ...]) -> nn.Module:
    """The spec's ResNet: `norm` "batch" or "none", channels scaled by `width`."""
    if settings["norm"] not in NORMS:
        raise ValueError(f"key 'norm': this ResNet takes one of {list(NORMS)}, got {settings['norm']!r}")
    widths = tuple(max(1, round(c * settings["width"])) for c in (16, 32, 64))
    return SmallResNet(input_shape[0], 10, widths, settings["norm"] == "batch")
