"""Task-aligned assignment (TOOD, Feng et al. 2021) in the form YOLOv8 uses, in bounded memory.

Index convention: B images, M ground truths per image (padded, ``gt_mask`` marks the real ones),
R real ground truths of the whole batch (flattened, row-major over (B, M)), A anchor points,
C classes, k the top-k. Boxes are xyxy pixels; anchor points are pixels.

Semantics, per real GT:
- candidates: anchor centres strictly inside the GT box (all four distances > ``eps``), a box
  side shorter than ``min_candidate_side`` px counting as that long about its centre (ultralytics
  8.4: its middle stride, 16, so that a tiny GT still finds candidates; 0 turns it off);
- overlap = CIoU(GT, predicted box) clamped at 0; metric = score(GT class)^alpha * overlap^beta,
  both for candidates only (0 elsewhere);
- the top-k anchors by metric over *all* anchors; a top-k anchor is positive if it is a candidate;
- an anchor positive for several GTs (in the top-k of each) goes, with the default
  ``tie_break="highest_iou_any"`` (YOLOv8's ``select_highest_overlaps``), to the GT of highest
  overlap among *all* real GTs whose box holds its centre, which may be a GT that did not pick it;
  that GT gains the anchor as a positive (its metric there enters its normalisation below). With
  ``tie_break="highest_iou_claimants"`` only the claimants compete. Ties go to the lowest GT index;
- target score = one-hot(label) * metric * max overlap / (max metric + eps), the maxima taken
  over the GT's final positives, so that its best anchor gets about its best overlap.
One corner where the default differs from the ultralytics code on purpose: when every GT holding a
multiply-claimed anchor has CIoU <= 0 (clamped to 0), ultralytics' argmax over a row of zeros falls
on GT index 0 of the image, whether or not that box holds the anchor or is padding; here the anchor
goes to the lowest-index GT that holds it. Its target score is 0 in both, and so are its
classification target and box-loss weight: the losses are the same, only ``labels``, ``bboxes``
and ``gt_index`` of that score-0 positive differ.

Memory: the plain formulation keeps several B x M x A tensors, which does not fit for crowded
images (B=16, M=1000, A=8400 is 134 M elements per tensor). Here the R real GTs are processed in
chunks of rows sized so that a chunk holds at most ``max_chunk_elements`` (row, anchor) entries;
overlaps and metrics are computed only for candidates, and the positives (at most k per GT) are
kept as a sparse (GT, anchor) list that is resolved once at the end. For the default tie-break, the
best overlap over all GTs holding each anchor is kept as a running maximum over the chunks in two
[B * A] buffers (value and lowest row), so it costs no extra pass. Padded rows cost nothing.
Every top-k row sees the same values as in the dense form (up to last-bit rounding of the
elementwise maths), so the result is the same, ties among zero metrics included (the dense
reference of the claimants rule is ``tests/reference/assigner.py``; the tests compare the two, and
the default against a dense form of ultralytics' rule and ultralytics itself when importable).

The helpers at the end (input checks, claim resolution, building the AssignResult from a sparse
list of pairs) are shared with the ATSS and SimOTA assigners.
"""
from __future__ import annotations

import torch
from torch import Tensor

from detector.assigners.base import AssignResult
from detector.boxes import aligned_iou


class TaskAlignedAssigner:
    """YOLOv8's task-aligned assigner; see the module docstring for the exact rules.

    Args:
        num_classes: C; label ``num_classes`` marks background.
        topk: anchors kept per GT before conflict resolution.
        alpha: exponent of the classification score in the alignment metric.
        beta: exponent of the CIoU in the alignment metric.
        eps: strict-inside margin (px) for candidates and the normalisation's guard.
        max_chunk_elements: bound on (GT row x anchor) entries held at once; sets peak memory
            (about 10 bytes per entry) without changing the result. None: ``default_chunk``.
        tie_break: who gets an anchor in the top-k of several GTs: ``"highest_iou_any"`` (YOLOv8,
            the highest CIoU among all GTs that hold it) or ``"highest_iou_claimants"`` (the
            highest CIoU among the GTs that picked it).
        min_candidate_side: px; shorter GT sides are lengthened to it about the box centre when
            picking candidates (overlaps and targets keep the real box). 0: off.
    """

    TIE_BREAKS = ("highest_iou_any", "highest_iou_claimants")

    def __init__(
        self,
        num_classes: int,
        topk: int = 10,
        alpha: float = 0.5,
        beta: float = 6.0,
        eps: float = 1e-9,
        max_chunk_elements: int | None = None,
        tie_break: str = "highest_iou_any",
        min_candidate_side: float = 0.0,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"TaskAlignedAssigner: num_classes must be >= 1, got {num_classes}")
        if topk < 1:
            raise ValueError(f"TaskAlignedAssigner: topk must be >= 1, got {topk}")
        if max_chunk_elements is not None and max_chunk_elements < 1:
            raise ValueError(f"TaskAlignedAssigner: max_chunk_elements must be >= 1, got {max_chunk_elements}")
        if tie_break not in self.TIE_BREAKS:
            raise ValueError(f"TaskAlignedAssigner: tie_break must be one of {', '.join(self.TIE_BREAKS)}, "
                             f"got {tie_break!r}")
        self.num_classes = num_classes
        self.tie_break = tie_break
        self.topk = topk
        self.alpha = alpha
        self.beta = beta
        self.eps = eps
        self.max_chunk_elements = max_chunk_elements
        self.min_candidate_side = float(min_candidate_side)

    def __repr__(self) -> str:
        return (f"TaskAlignedAssigner(num_classes={self.num_classes}, topk={self.topk}, "
                f"alpha={self.alpha}, beta={self.beta}, eps={self.eps}, tie_break={self.tie_break!r}, "
                f"min_candidate_side={self.min_candidate_side})")

    @torch.no_grad()
    def __call__(
        self,
        pred_scores: Tensor,
        pred_bboxes: Tensor,
        anchor_points: Tensor,
        gt_labels: Tensor,
        gt_bboxes: Tensor,
        gt_mask: Tensor,
        strides: Tensor | None = None,
    ) -> AssignResult:
        """Assign; ``strides`` is accepted for a common signature and not used."""
        check_inputs("TaskAlignedAssigner", self.num_classes, pred_scores, pred_bboxes, anchor_points,
                     gt_labels, gt_bboxes, gt_mask, strides)
        _, num_anchors, _ = pred_scores.shape
        rows = real_gt_rows(gt_labels, gt_bboxes, gt_mask)
        if rows.count == 0:
            return background_result(pred_scores, gt_bboxes, self.num_classes)

        k = min(self.topk, num_anchors)
        chunk = max(1, (self.max_chunk_elements or default_chunk(pred_scores.device)) // num_anchors)
        pos_row, pos_anchor, pos_overlap, pos_metric = [], [], [], []
        any_gt = self.tie_break == "highest_iou_any"
        best_overlap = best_row = None  # any_gt: per (image, anchor) [B * A], see track_best_overlap
        for start in range(0, rows.count, chunk):
            stop = min(start + chunk, rows.count)
            boxes, image = rows.boxes[start:stop], rows.image[start:stop]  # [r, 4], [r]
            inside = points_inside_boxes(anchor_points, lengthen_short_sides(boxes, self.min_candidate_side),
                                         self.eps)  # [r, A] bool
            cand_row, cand_anchor = inside.nonzero(as_tuple=True)  # row-major: sorted keys
            cand_image = image[cand_row]
            overlap = aligned_iou(at_least_float32(boxes[cand_row]),
                                  at_least_float32(pred_bboxes[cand_image, cand_anchor]), kind="ciou").clamp_(min=0)
            score = at_least_float32(pred_scores[cand_image, cand_anchor, rows.labels[start:stop][cand_row]])
            metric = score.pow(self.alpha) * overlap.pow(self.beta)  # [candidates]
            if any_gt:
                if best_overlap is None:
                    best_overlap = overlap.new_full((pred_scores.shape[0] * num_anchors,), -1.0)
                    best_row = torch.full_like(best_overlap, -1, dtype=torch.long)
                track_best_overlap(best_overlap, best_row, cand_image * num_anchors + cand_anchor,
                                   cand_row + start, overlap)

            dense_metric = torch.zeros(inside.shape, dtype=metric.dtype, device=metric.device)  # [r, A]
            dense_metric[cand_row, cand_anchor] = metric
            top_anchor = dense_metric.topk(k, dim=1).indices  # [r, k]
            del dense_metric
            hit_row, hit_k = inside.gather(1, top_anchor).nonzero(as_tuple=True)
            hit_anchor = top_anchor[hit_row, hit_k]
            # Each positive is a candidate: find its slot in the (sorted) candidate list.
            slot = torch.searchsorted(cand_row * num_anchors + cand_anchor, hit_row * num_anchors + hit_anchor)
            pos_row.append(hit_row + start)
            pos_anchor.append(hit_anchor)
            pos_overlap.append(overlap[slot])
            pos_metric.append(metric[slot])

        pos_row, pos_anchor = torch.cat(pos_row), torch.cat(pos_anchor)
        pos_overlap, pos_metric = torch.cat(pos_overlap), torch.cat(pos_metric)
        anchor_key = rows.image[pos_row] * num_anchors + pos_anchor  # [P]
        if any_gt:
            pos_row, pos_anchor, pos_overlap, pos_metric = self._give_to_best_holder(
                pred_scores, rows, anchor_key, pos_row, pos_anchor, pos_overlap, pos_metric,
                best_overlap, best_row, num_anchors)
        else:
            keep = resolve_claims(anchor_key, pos_row, pos_overlap)
            pos_row, pos_anchor = pos_row[keep], pos_anchor[keep]
            pos_overlap, pos_metric = pos_overlap[keep], pos_metric[keep]

        # Per-GT maxima over the final positives (both values are >= 0, so 0 is a safe start).
        max_overlap = pos_overlap.new_zeros(rows.count).scatter_reduce_(0, pos_row, pos_overlap, "amax")
        max_metric = pos_metric.new_zeros(rows.count).scatter_reduce_(0, pos_row, pos_metric, "amax")
        quality = pos_metric * max_overlap[pos_row] / (max_metric[pos_row] + self.eps)
        return build_result(pred_scores, gt_bboxes, self.num_classes, rows, pos_row, pos_anchor, quality)

    def _give_to_best_holder(
        self, pred_scores: Tensor, rows: "GtRows", anchor_key: Tensor, pos_row: Tensor, pos_anchor: Tensor,
        pos_overlap: Tensor, pos_metric: Tensor, best_overlap: Tensor, best_row: Tensor, num_anchors: int,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """YOLOv8's rule: a multiply-claimed anchor becomes one positive of the best GT holding it.

        Pairs [P] in, final pairs out: the singly-claimed ones unchanged, then one pair per
        multiply-claimed anchor with the winner's row, overlap and metric there.
        """
        if anchor_key.numel() == 0:
            return pos_row, pos_anchor, pos_overlap, pos_metric
        unique_key, slot, counts = anchor_key.unique(return_inverse=True, return_counts=True)  # [U]
        single = counts[slot] == 1  # [P]
        multi_key = unique_key[counts > 1]  # [U'] image * A + anchor
        win_row, win_overlap = best_row[multi_key], best_overlap[multi_key]
        win_anchor = multi_key % num_anchors
        score = at_least_float32(pred_scores[rows.image[win_row], win_anchor, rows.labels[win_row]])
        win_metric = score.pow(self.alpha) * win_overlap.pow(self.beta)  # as in the chunk loop
        return (torch.cat((pos_row[single], win_row)), torch.cat((pos_anchor[single], win_anchor)),
                torch.cat((pos_overlap[single], win_overlap)), torch.cat((pos_metric[single], win_metric)))


def track_best_overlap(best_overlap: Tensor, best_row: Tensor, key: Tensor, row: Tensor, overlap: Tensor) -> None:
    """Fold one chunk of candidate pairs into the running best overlap per (image, anchor), in place.

    best_overlap / best_row [B * A] (-1 where no GT holds the anchor yet); key [N] = image * A +
    anchor, row [N] GT rows, overlap [N]. Chunks come in increasing row order, so a later chunk
    replaces the holder only with a strictly higher overlap: a tie keeps the lowest row.
    """
    if key.numel() == 0:
        return
    chunk_best = torch.full_like(best_overlap, -1.0).scatter_reduce_(0, key, overlap, "amax")  # [B * A]
    big = torch.iinfo(row.dtype).max
    is_best = overlap == chunk_best[key]
    first_row = torch.full_like(best_row, big).scatter_reduce_(
        0, key, torch.where(is_best, row, torch.full_like(row, big)), "amin")  # [B * A]
    improved = chunk_best > best_overlap
    best_row.copy_(torch.where(improved, first_row, best_row))
    torch.maximum(best_overlap, chunk_best, out=best_overlap)


# ----------------------------------------------------------------------------------------------
# Helpers shared by the assigners.


class GtRows:
    """The real GTs of a batch as flat rows (row-major over (B, M), so lower row = lower index)."""

    def __init__(self, image: Tensor, index: Tensor, labels: Tensor, boxes: Tensor) -> None:
        self.image = image  # [R] long, the image of each row
        self.index = index  # [R] long, the GT's index in [0, M)
        self.labels = labels  # [R] long
        self.boxes = boxes  # [R, 4] xyxy px
        self.count = int(image.numel())


def real_gt_rows(gt_labels: Tensor, gt_bboxes: Tensor, gt_mask: Tensor) -> GtRows:
    image, index = gt_mask.nonzero(as_tuple=True)
    return GtRows(image, index, gt_labels[image, index], gt_bboxes[image, index])


def default_chunk(device: torch.device) -> int:
    """(GT row x anchor) entries per chunk: on CPU 1 M (about 10 MB, past which the time per
    entry stops falling and glibc's heap starts to fragment); on a GPU 16 M, where a chunk is a few
    kernel launches and memory is plentiful."""
    return 1 << 24 if device.type == "cuda" else 1 << 20


def at_least_float32(tensor: Tensor) -> Tensor:
    """Half-precision inputs (AMP) are promoted: score^alpha * IoU^beta underflows in fp16."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def lengthen_short_sides(boxes: Tensor, min_side: float) -> Tensor:
    """[R, 4] xyxy with every side shorter than ``min_side`` lengthened to it about the centre
    (through centre and size, as ultralytics 8.4 computes it); the boxes as they are when 0."""
    if min_side <= 0:
        return boxes
    centre, size = (boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]
    size = torch.where(size < min_side, torch.full_like(size, min_side), size)
    return torch.cat((centre - size / 2, centre + size / 2), dim=1)


def points_inside_boxes(points: Tensor, boxes: Tensor, eps: float) -> Tensor:
    """[A, 2] points x [R, 4] boxes -> [R, A] bool: all four distances to the sides > eps.

    Distances are formed as differences (not ``x > x1 + eps``) so that the test is bit-for-bit
    the one of the dense formulation.
    """
    x, y = points[:, 0], points[:, 1]
    x1, y1, x2, y2 = (boxes[:, i : i + 1] for i in range(4))  # each [R, 1]
    inside = (x - x1) > eps
    inside &= (y - y1) > eps
    inside &= (x2 - x) > eps
    inside &= (y2 - y) > eps
    return inside


def resolve_claims(anchor_key: Tensor, row: Tensor, priority: Tensor) -> Tensor:
    """Which (GT row, anchor) pairs survive when several GTs claim one anchor.

    anchor_key [P] identifies the anchor (image * A + anchor), row [P] the GT row, priority [P]
    the value to maximise. Keeps, per anchor, the claimant of highest priority and, on a tie,
    the lowest row. Pairs are assumed unique. Returns a [P] bool mask.
    """
    if anchor_key.numel() == 0:
        return torch.zeros_like(anchor_key, dtype=torch.bool)
    unique_key, slot = anchor_key.unique(return_inverse=True)  # slot [P] in [0, U)
    best = priority.new_full((unique_key.numel(),), float("-inf")).scatter_reduce_(0, slot, priority, "amax")
    is_best = priority == best[slot]
    big = torch.iinfo(row.dtype).max
    first_row = row.new_full((unique_key.numel(),), big).scatter_reduce_(
        0, slot, torch.where(is_best, row, torch.full_like(row, big)), "amin")
    return is_best & (row == first_row[slot])


def background_result(pred_scores: Tensor, gt_bboxes: Tensor, num_classes: int) -> AssignResult:
    batch, num_anchors, _ = pred_scores.shape
    device = pred_scores.device
    return AssignResult(
        labels=torch.full((batch, num_anchors), num_classes, dtype=torch.long, device=device),
        bboxes=torch.zeros((batch, num_anchors, 4), dtype=gt_bboxes.dtype, device=device),
        scores=torch.zeros_like(pred_scores),
        fg_mask=torch.zeros((batch, num_anchors), dtype=torch.bool, device=device),
        gt_index=torch.zeros((batch, num_anchors), dtype=torch.long, device=device),
    )


def build_result(
    pred_scores: Tensor, gt_bboxes: Tensor, num_classes: int, rows: GtRows,
    pos_row: Tensor, pos_anchor: Tensor, quality: Tensor,
) -> AssignResult:
    """AssignResult from final positives: GT row [P], anchor [P] and soft score [P]."""
    result = background_result(pred_scores, gt_bboxes, num_classes)
    image = rows.image[pos_row]
    labels = rows.labels[pos_row]
    result.labels[image, pos_anchor] = labels
    result.bboxes[image, pos_anchor] = rows.boxes[pos_row].to(gt_bboxes.dtype)
    result.scores[image, pos_anchor, labels] = quality.to(pred_scores.dtype)
    result.fg_mask[image, pos_anchor] = True
    result.gt_index[image, pos_anchor] = rows.index[pos_row]
    return result


def check_inputs(
    name: str, num_classes: int, pred_scores: Tensor, pred_bboxes: Tensor, anchor_points: Tensor,
    gt_labels: Tensor, gt_bboxes: Tensor, gt_mask: Tensor, strides: Tensor | None,
) -> None:
    """Shapes and dtypes of the common assigner call; raises ValueError naming the argument."""
    if pred_scores.dim() != 3:
        raise ValueError(f"{name}: pred_scores must be [B, A, C], got shape {tuple(pred_scores.shape)}")
    batch, num_anchors, num_cls = pred_scores.shape
    if num_cls != num_classes:
        raise ValueError(f"{name}: pred_scores has {num_cls} classes but the assigner was built with "
                         f"num_classes={num_classes}")
    expected = {
        "pred_bboxes": (pred_bboxes, (batch, num_anchors, 4)),
        "anchor_points": (anchor_points, (num_anchors, 2)),
    }
    for arg, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name}: {arg} must have shape {shape}, got {tuple(tensor.shape)}")
    if gt_bboxes.dim() != 3 or gt_bboxes.shape[0] != batch or gt_bboxes.shape[2] != 4:
        raise ValueError(f"{name}: gt_bboxes must be [B={batch}, M, 4], got {tuple(gt_bboxes.shape)}")
    num_gt = gt_bboxes.shape[1]
    if tuple(gt_labels.shape) != (batch, num_gt) or tuple(gt_mask.shape) != (batch, num_gt):
        raise ValueError(f"{name}: gt_labels and gt_mask must be [B, M] = {(batch, num_gt)}, got "
                         f"{tuple(gt_labels.shape)} and {tuple(gt_mask.shape)}")
    if gt_mask.dtype != torch.bool:
        raise ValueError(f"{name}: gt_mask must be bool, got {gt_mask.dtype}")
    if gt_labels.dtype.is_floating_point:
        raise ValueError(f"{name}: gt_labels must be an integer tensor, got {gt_labels.dtype}")
    real = gt_labels[gt_mask]
    if real.numel() and (int(real.min()) < 0 or int(real.max()) >= num_classes):
        raise ValueError(f"{name}: gt_labels of real GTs must lie in [0, {num_classes}), got "
                         f"[{int(real.min())}, {int(real.max())}]")
    if strides is not None and tuple(strides.shape) != (num_anchors,):
        raise ValueError(f"{name}: strides must have shape ({num_anchors},), got {tuple(strides.shape)}")
