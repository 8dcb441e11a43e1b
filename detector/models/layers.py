"""Building blocks shared by the architectures: Conv-BN-SiLU (grouped, or without activation), the
pointwise conv it uses for 1x1 kernels, the bottleneck, the C2f block, SPPF. Blocks of one
architecture only live in its module (yolo11.py).

Channel counts are explicit arguments; the scale multipliers live in each architecture's module.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class PointwiseConv2d(nn.Conv2d):
    """A 1x1, stride-1, ungrouped ``nn.Conv2d`` (same parameters and state-dict keys) that trains as a
    matrix product on channels-last CPU tensors.

    In NHWC memory a 1x1 conv is ``[N*H*W, C_in] @ weight[C_out, C_in]^T``: the permuted view is
    already contiguous, so ``F.linear`` runs it as one GEMM, forward and backward. torch's CPU conv
    takes its slow im2col path for such kernels at batch < 16 on one thread and oneDNN otherwise;
    the GEMM is faster than both (docs/benchmarks.md, "A training step"). The result is the same
    tensor up to float rounding, with channels-last strides. Evaluation, export and other devices
    keep the conv.
    """

    def __init__(self, c_in: int, c_out: int, bias: bool = True):
        super().__init__(c_in, c_out, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.device.type == "cpu" and x.is_contiguous(memory_format=torch.channels_last):
            return F.linear(x.permute(0, 2, 3, 1), self.weight.flatten(1), self.bias).permute(0, 3, 1, 2)
        return super().forward(x)


def conv2d(c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1, bias: bool = True) -> nn.Conv2d:
    """``nn.Conv2d`` with "same" padding; a ``PointwiseConv2d`` where the kernel is 1x1, stride 1, ungrouped."""
    if kernel == 1 and stride == 1 and groups == 1:
        return PointwiseConv2d(c_in, c_out, bias=bias)
    return nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=bias)


class Conv(nn.Module):
    """Conv2d (no bias) + BatchNorm + SiLU; ``fuse()`` folds the BN into a biased conv.

    ``groups=c_in`` (= c_out) makes it depthwise; ``act=False`` leaves the output linear (attention's
    projections, the second conv of a feed-forward block).
    """

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = conv2d(c_in, c_out, kernel, stride, groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.03)
        # not in place: autograd would copy each input to keep it for the backward
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))

    @torch.no_grad()
    def fuse(self) -> None:
        if isinstance(self.bn, nn.Identity):
            return
        conv, bn = self.conv, self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # [c_out]
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                          groups=conv.groups, bias=True).to(conv.weight.device, conv.weight.dtype)
        fused.weight.copy_(conv.weight * scale[:, None, None, None])
        fused.bias.copy_(bn.bias - bn.running_mean * scale)
        self.conv, self.bn = fused, nn.Identity()


class Bottleneck(nn.Module):
    """Two 3x3 convs (hidden width ``expansion * c_out``) with an optional residual (when shapes allow).

    C2f's bottlenecks keep the full width (expansion 1); YOLO11's C3k2 halves it (expansion 0.5).
    """

    def __init__(self, c_in: int, c_out: int, shortcut: bool = True, expansion: float = 1.0):
        super().__init__()
        hidden = int(c_out * expansion)
        self.cv1 = Conv(c_in, hidden, 3)
        self.cv2 = Conv(hidden, c_out, 3)
        self.add = shortcut and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """CSP block with two convolutions: split, n bottlenecks on one half, concatenate all outputs.

    ``expansion``: the width of each half as a fraction of ``c_out`` (YOLO11's C3k2 uses 0.25 early on).
    """

    def __init__(self, c_in: int, c_out: int, n: int = 1, shortcut: bool = False, expansion: float = 0.5):
        super().__init__()
        self.hidden = int(c_out * expansion)
        self.cv1 = Conv(c_in, 2 * self.hidden, 1)
        self.cv2 = Conv((2 + n) * self.hidden, c_out, 1)
        self.m = nn.ModuleList(Bottleneck(self.hidden, self.hidden, shortcut) for _ in range(n))

    def forward(self, x: Tensor) -> Tensor:
        y = list(self.cv1(x).split((self.hidden, self.hidden), dim=1))
        for block in self.m:
            y.append(block(y[-1]))
        return self.cv2(torch.cat(y, dim=1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained max-pools concatenated with their input."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 5):
        super().__init__()
        hidden = c_in // 2
        self.cv1 = Conv(c_in, hidden, 1)
        self.cv2 = Conv(hidden * 4, c_out, 1)
        self.pool = nn.MaxPool2d(kernel, stride=1, padding=kernel // 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.cv1(x)
        p1 = self.pool(x)
        p2 = self.pool(p1)
        return self.cv2(torch.cat((x, p1, p2, self.pool(p2)), dim=1))


class StagedBackbone(nn.Module):
    """A stem and four stages (``stem``, ``stage1`` ... ``stage4``, set by the architecture):
    images [B, 3, H, W] -> (P3, P4, P5) at strides 8, 16, 32."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.stage1(self.stem(x))
        p3 = self.stage2(x)  # stride 8
        p4 = self.stage3(p3)  # stride 16
        p5 = self.stage4(p4)  # stride 32
        return p3, p4, p5
