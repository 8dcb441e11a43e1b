"""YOLO11 (ultralytics' yolo11.yaml): Conv + C3k2 stages, SPPF, then C2PSA (position-sensitive
self-attention at stride 32); a PAN-FPN neck of C3k2 blocks (with shortcuts); the decoupled head
whose class branch is depthwise-separable (DWConv 3x3 + Conv 1x1, twice), box branch and DFL as YOLOv8's.

ultralytics' layer list (index: class -> our module):
    0 Conv -> backbone.stem          1 Conv, 2 C3k2 -> backbone.stage1.{0,1}
    3 Conv, 4 C3k2 -> backbone.stage2 (P3)   5 Conv, 6 C3k2 -> backbone.stage3 (P4)
    7 Conv, 8 C3k2, 9 SPPF, 10 C2PSA -> backbone.stage4.{0,1,2,3} (P5)
    11 Upsample, 12 Concat, 13 C3k2 -> neck.top_down4   14 Upsample, 15 Concat, 16 C3k2 -> neck.top_down3
    17 Conv -> neck.down3, 18 Concat, 19 C3k2 -> neck.bottom_up4   20 Conv -> neck.down4, 21 Concat,
    22 C3k2 -> neck.bottom_up5   23 Detect -> head

C3k inner blocks: the yaml turns them on at layers 6, 8 and 22; ultralytics' parser turns them on in
every C3k2 at scales m, l and x (``C3K_EVERYWHERE``). Unlike YOLOv8's, the yaml's P3/P4 widths differ
between backbone and neck (layer 4 is 512 wide, layer 16 is 256).

Index convention in the attention: B images, C channels, N = H * W positions, h heads.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from detector.models.layers import StagedBackbone, SPPF, Bottleneck, C2f, Conv
from detector.models.neck import PANFPN
from detector.models.registry import Architecture, Scale

SCALES = {  # depth, width, max_channels of yolo11.yaml
    "n": Scale(0.50, 0.25, 1024),
    "s": Scale(0.50, 0.50, 1024),
    "m": Scale(0.50, 1.00, 512),
    "l": Scale(1.00, 1.00, 512),
    "x": Scale(1.00, 1.50, 512),
}
C3K_EVERYWHERE = frozenset({"m", "l", "x"})  # ultralytics' parser forces C3k blocks into every C3k2 here
LAYERS = ("Conv", "Conv", "C3k2", "Conv", "C3k2", "Conv", "C3k2", "Conv", "C3k2", "SPPF", "C2PSA", "Upsample",
          "Concat", "C3k2", "Upsample", "Concat", "C3k2", "Conv", "Concat", "C3k2", "Conv", "Concat", "C3k2", "Detect")
LAYER_PREFIXES = {
    0: "backbone.stem", 1: "backbone.stage1.0", 2: "backbone.stage1.1", 3: "backbone.stage2.0",
    4: "backbone.stage2.1", 5: "backbone.stage3.0", 6: "backbone.stage3.1", 7: "backbone.stage4.0",
    8: "backbone.stage4.1", 9: "backbone.stage4.2", 10: "backbone.stage4.3", 13: "neck.top_down4",
    16: "neck.top_down3", 17: "neck.down3", 19: "neck.bottom_up4", 20: "neck.down4", 22: "neck.bottom_up5",
    23: "head",
}


class C3k(nn.Module):
    """CSP block with three convolutions: one 1x1 branch through ``n`` full-width 3x3 bottlenecks, one
    1x1 branch as is, a 1x1 conv over both. Hidden width c_out / 2."""

    def __init__(self, c_in: int, c_out: int, n: int = 2, shortcut: bool = True):
        super().__init__()
        hidden = c_out // 2
        self.cv1 = Conv(c_in, hidden, 1)
        self.cv2 = Conv(c_in, hidden, 1)
        self.cv3 = Conv(2 * hidden, c_out, 1)
        self.m = nn.Sequential(*(Bottleneck(hidden, hidden, shortcut) for _ in range(n)))

    def forward(self, x: Tensor) -> Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), dim=1))


class C3k2(C2f):
    """C2f whose ``n`` inner blocks are C3k blocks (``c3k``) or half-width bottlenecks; shortcuts on."""

    def __init__(self, c_in: int, c_out: int, n: int = 1, c3k: bool = False, expansion: float = 0.5,
                 shortcut: bool = True):
        super().__init__(c_in, c_out, n, shortcut, expansion)
        c = self.hidden
        self.m = nn.ModuleList(C3k(c, c, 2, shortcut) if c3k else Bottleneck(c, c, shortcut, expansion=0.5)
                               for _ in range(n))


class Attention(nn.Module):
    """Multi-head self-attention over all H * W positions, with a depthwise 3x3 conv of the values
    added as a positional term (the "position-sensitive" part), then a 1x1 projection.

    Heads: ``num_heads``, each with values of ``C / num_heads`` channels and queries/keys of half that
    (``attn_ratio``). One 1x1 conv makes q, k, v for all heads, laid out per head as [q | k | v].
    """

    def __init__(self, dim: int, num_heads: int, attn_ratio: float = 0.5):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.key_dim = int(self.head_dim * attn_ratio)
        self.scale = self.key_dim ** -0.5
        self.qkv = Conv(dim, dim + 2 * self.key_dim * num_heads, 1, act=False)
        self.proj = Conv(dim, dim, 1, act=False)
        self.pe = Conv(dim, dim, 3, groups=dim, act=False)

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        qkv = self.qkv(x).view(batch, self.num_heads, 2 * self.key_dim + self.head_dim, height * width)
        q, k, v = qkv.split((self.key_dim, self.key_dim, self.head_dim), dim=2)  # [B, h, d, N] each
        weights = ((q * self.scale).transpose(-2, -1) @ k).softmax(dim=-1)  # [B, h, N queries, N keys]
        out = (v @ weights.transpose(-2, -1)).view(batch, channels, height, width)  # [B, C, H, W]
        return self.proj(out + self.pe(v.reshape(batch, channels, height, width)))


class PSABlock(nn.Module):
    """Attention then a 1x1 feed-forward (2x wider, linear output), each with a residual."""

    def __init__(self, c: int, num_heads: int, attn_ratio: float = 0.5, shortcut: bool = True):
        super().__init__()
        self.attn = Attention(c, num_heads=num_heads, attn_ratio=attn_ratio)
        self.ffn = nn.Sequential(Conv(c, 2 * c, 1), Conv(2 * c, c, 1, act=False))
        self.add = shortcut

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(x) if self.add else self.attn(x)
        return x + self.ffn(x) if self.add else self.ffn(x)


class C2PSA(nn.Module):
    """Split a 1x1 conv's output in halves; ``n`` PSA blocks (one head per 64 channels) on one half;
    a 1x1 conv over both. Keeps the width."""

    def __init__(self, c: int, n: int = 1, expansion: float = 0.5):
        super().__init__()
        self.hidden = int(c * expansion)
        self.cv1 = Conv(c, 2 * self.hidden, 1)
        self.cv2 = Conv(2 * self.hidden, c, 1)
        heads = max(self.hidden // 64, 1)
        self.m = nn.Sequential(*(PSABlock(self.hidden, num_heads=heads) for _ in range(n)))

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.cv1(x).split((self.hidden, self.hidden), dim=1)
        return self.cv2(torch.cat((a, self.m(b)), dim=1))


class YOLO11Backbone(StagedBackbone):
    """Stem, four stride-2 stages of Conv + C3k2, then SPPF and C2PSA. Returns the stride 8, 16, 32 maps."""

    def __init__(self, scale: Scale, c3k_everywhere: bool):
        super().__init__()
        c = {w: scale.channels(w) for w in (64, 128, 256, 512, 1024)}
        n = scale.repeats(2)
        self.stem = Conv(3, c[64], 3, 2)
        self.stage1 = nn.Sequential(Conv(c[64], c[128], 3, 2), C3k2(c[128], c[256], n, c3k_everywhere, 0.25))
        self.stage2 = nn.Sequential(Conv(c[256], c[256], 3, 2), C3k2(c[256], c[512], n, c3k_everywhere, 0.25))
        self.stage3 = nn.Sequential(Conv(c[512], c[512], 3, 2), C3k2(c[512], c[512], n, True))
        self.stage4 = nn.Sequential(Conv(c[512], c[1024], 3, 2), C3k2(c[1024], c[1024], n, True),
                                    SPPF(c[1024], c[1024], 5), C2PSA(c[1024], n))
        self.out_channels = (c[512], c[512], c[1024])


def build_features(scale_name: str) -> tuple[YOLO11Backbone, PANFPN]:
    scale, c3k = SCALES[scale_name], scale_name in C3K_EVERYWHERE
    backbone = YOLO11Backbone(scale, c3k)
    b3, b4, b5 = backbone.out_channels
    o3, o4, o5 = scale.channels(256), scale.channels(512), scale.channels(1024)  # layers 16, 19, 22
    n = scale.repeats(2)
    neck = PANFPN(top_down4=C3k2(b5 + b4, o4, n, c3k), top_down3=C3k2(o4 + b3, o3, n, c3k),
                  down3=Conv(o3, o3, 3, 2), bottom_up4=C3k2(o3 + o4, o4, n, c3k),
                  down4=Conv(o4, o4, 3, 2), bottom_up5=C3k2(o4 + b5, o5, n, True), out_channels=(o3, o4, o5))
    return backbone, neck


ARCHITECTURE = Architecture(name="yolo11", title="YOLO11", scales=SCALES, build_features=build_features,
                            depthwise_cls=True, layers=LAYERS, layer_prefixes=LAYER_PREFIXES, backbone_layers=11,
                            probe_repeats=2)
