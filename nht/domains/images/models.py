"""Image classifiers: the paper's SimpleCNN and a 32x32 ResNet18 (BatchNorm, GroupNorm or none).

SimpleCNN at ``width = 1``: 4 conv (3x3, 32-64-128-128 channels, ReLU, 2x2 max-pool after each) +
2 linear (512 -> 90 -> classes) layers, no normalisation; 287,912 parameters for 10 classes on
32x32 inputs (an adaptive 2x2 average pool makes the head independent of the input size).
``width`` multiplies every channel count and the hidden width (CPU-scale runs).

ResNet18 follows torchvision's ``resnet18`` (BasicBlocks [2, 2, 2, 2], 64-128-256-512 channels) adapted
to 32x32 images as usual for CIFAR: a 3x3 stride-1 stem and no max-pool. ``norm`` picks BatchNorm,
GroupNorm (groups of up to 32 channels) or no normalisation; ``width`` scales the channels.

MLP (``name: mlp``): flatten -> ``hidden`` ReLU layers (e.g. [256, 256]) -> classes; no normalisation.

``init_scale`` (model block, any model): every initial parameter is multiplied by this factor after the
default initialisation, so V_init = init_scale**2 * V_init(default) (V = squared L2 norm). Absent or 1.0
leaves the default initialisation unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from nht.core.norms import scale_init


class SimpleCNN(nn.Module):
    def __init__(self, n_classes: int = 10, width: float = 1.0, in_channels: int = 3):
        super().__init__()
        c = [max(1, int(round(k * width))) for k in (32, 64, 128, 128)]
        hidden = max(1, int(round(90 * width)))
        layers, prev = [], in_channels
        for i, ch in enumerate(c):
            layers += [nn.Conv2d(prev, ch, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            prev = ch
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc1 = nn.Linear(prev * 4, hidden)
        self.fc2 = nn.Linear(hidden, n_classes)

    def forward(self, x):
        x = self.pool(self.features(x)).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


def _norm_layer(kind: str):
    if kind == "batchnorm":
        return nn.BatchNorm2d
    if kind == "groupnorm":
        return lambda c: nn.GroupNorm(min(32, c) if c % min(32, c) == 0 else 1, c)
    if kind == "none":
        return lambda c: nn.Identity()
    raise ValueError(f"unknown norm '{kind}' (batchnorm, groupnorm, none)")


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, norm):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = norm(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        idn = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + idn)


class ResNet18(nn.Module):
    def __init__(self, n_classes: int = 10, width: float = 1.0, norm: str = "batchnorm", in_channels: int = 3):
        super().__init__()
        nl = _norm_layer(norm)
        ch = [max(1, int(round(k * width))) for k in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(in_channels, ch[0], 3, 1, 1, bias=False)
        self.bn1 = nl(ch[0])
        blocks, prev = [], ch[0]
        for i, c in enumerate(ch):
            stride = 1 if i == 0 else 2
            blocks.append(nn.Sequential(BasicBlock(prev, c, stride, nl), BasicBlock(c, c, 1, nl)))
            prev = c
        self.layer1, self.layer2, self.layer3, self.layer4 = blocks
        self.fc = nn.Linear(prev, n_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class MLP(nn.Module):
    """Flatten -> Linear+ReLU per entry of ``hidden`` -> Linear to classes (input size fixed at build)."""

    def __init__(self, n_classes: int, in_features: int, hidden=(256, 256)):
        super().__init__()
        layers, prev = [], in_features
        for h in hidden:
            layers += [nn.Linear(prev, int(h)), nn.ReLU(inplace=True)]
            prev = int(h)
        layers.append(nn.Linear(prev, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x.flatten(1))


def build_model(spec: dict, n_classes: int, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """Model from an experiment's ``model`` block: {name: simple_cnn|resnet18|mlp, width_mult, norm,
    hidden, init_scale}. ``input_shape`` = (C, H, W) of one image, needed by ``mlp`` only."""
    name = spec.get("name", "simple_cnn")
    if name == "simple_cnn":
        model = SimpleCNN(n_classes, spec.get("width_mult", 1.0))
    elif name == "resnet18":
        model = ResNet18(n_classes, spec.get("width_mult", 1.0), spec.get("norm", "batchnorm"))
    elif name == "mlp":
        if input_shape is None:
            raise ValueError("model 'mlp' needs the input shape (C, H, W)")
        in_features = 1
        for d in input_shape:
            in_features *= int(d)
        hidden = [max(1, int(round(h * spec.get("width_mult", 1.0)))) for h in spec.get("hidden", [256, 256])]
        model = MLP(n_classes, in_features, hidden)
    else:
        raise ValueError(f"unknown model '{name}'")
    return scale_init(model, float(spec.get("init_scale", 1.0)))


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
