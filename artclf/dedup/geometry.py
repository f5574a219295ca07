"""Geometric verification of a candidate re-photograph: local features, ratio test, RANSAC.

CNN embeddings and aligned thumbnails are appearance tests: they also score alike two different
works that share a palette and a composition (a painter's series of one motif), two dark sparse
paintings, two grids in the manner of Mondrian. "The same painting" is a geometric fact: the
same marks in the same places, up to the camera. So each candidate pair is verified on ORB
keypoints (OpenCV) of a grayscale copy whose longer side is :data:`SIDE` px: the first image's
descriptors matched in the second with Lowe's ratio test (one match per keypoint of the second),
then a RANSAC homography; the pair is one painting when at least ``min_inliers`` matches agree
with a homography a camera can make (orientation kept, no extreme shear or scale). RANSAC can
return a degenerate homography for a real copy, so when it is not camera-like a RANSAC
similarity (rotation, one scale, shift: no shear or perspective to go wrong; scale within 3×)
gets the last word; rotation is free because a painting may be photographed turned.

Grayscale makes colour casts and grayscale copies irrelevant; the resize to :data:`SIDE` makes
resized copies match at scale 1; crops and perspective are what the homography models; a
mirrored copy is matched against the keypoints of the mirrored image, which are kept too. An
image with fewer than ``min_keypoints`` keypoints (a few lines on black) is no evidence either
way: its CNN pairs are rejected and its hash pairs stand. Hash pairs of images with keypoints
are verified too: a shared composition (the same large shapes in the same places) gives two
works one perceptual hash.

Thresholds were chosen on sample data's planted truth (docs/benchmarks.md, "Dedup precision
with look-alikes"). Keypoints depend on :data:`PARAMS`; a feature-store chunk made with others is not read.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

SIDE = 512  # px, longer side of the grayscale copy the keypoints are found on
N_FEATURES = 500  # keypoints kept per image (and per mirror image)
RATIO = 0.8  # Lowe's ratio test: best match distance below RATIO × second best
RANSAC_PX = 4.0  # reprojection error of an inlier, px at SIDE
RANSAC_ITERS = 500
FAST_THRESHOLD = 5  # ORB's corner threshold: low, so smooth paintings get keypoints too
MIN_INLIERS = 25  # default; full-scale sample truth: copies' 1st percentile 44, non-look-alikes <= 14
MIN_KEYPOINTS = 50  # default: fewer is no evidence either way
PARAMS = {"side": SIDE, "n_features": N_FEATURES, "fast_threshold": FAST_THRESHOLD}  # keypoints depend on


@dataclass(frozen=True)
class Local:
    """Keypoint positions (n, 2) float16 in px at SIDE and ORB descriptors (n, 32) uint8, of the
    image (``xy``, ``desc``) and of its mirror image (``xy_m``, ``desc_m``): about 36 KB."""

    xy: np.ndarray
    desc: np.ndarray
    xy_m: np.ndarray
    desc_m: np.ndarray

    @property
    def n(self) -> int:
        return len(self.desc)


def gray_copy(im: Image.Image) -> np.ndarray:
    """The grayscale copy keypoints are found on: longer side SIDE px, up or down."""
    f = SIDE / max(im.size)
    size = (max(1, round(im.width * f)), max(1, round(im.height * f)))
    return np.asarray(im.convert("L").resize(size, Image.Resampling.BILINEAR))


def _detect(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    orb = cv2.ORB_create(nfeatures=N_FEATURES, fastThreshold=FAST_THRESHOLD)
    kp, desc = orb.detectAndCompute(gray, None)
    if desc is None:
        return np.zeros((0, 2), np.float16), np.zeros((0, 32), np.uint8)
    return np.array([k.pt for k in kp], np.float16).reshape(-1, 2), desc  # 0.25 px steps at 512


def local_features(im: Image.Image) -> Local:
    """ORB keypoints of an (upright) image and of its mirror image."""
    cv2.setNumThreads(1)  # parallelism comes from DataLoader workers (and verify's threads)
    gray = gray_copy(im)
    xy, desc = _detect(gray)
    xy_m, desc_m = _detect(np.ascontiguousarray(gray[:, ::-1]))
    return Local(xy, desc, xy_m, desc_m)


def _camera_like(h: np.ndarray | None) -> bool:
    """A homography a camera could make of a flat painting: keeps orientation, scale within 3×,
    anisotropy (smaller / larger singular value) at least 0.5, mild perspective."""
    if h is None or abs(h[2, 2]) < 1e-9:
        return False
    a = h[:2, :2] / h[2, 2]
    if np.linalg.det(a) <= 0:
        return False
    lo, hi = np.linalg.svd(a, compute_uv=False)[::-1]
    return lo / hi >= 0.5 and 1 / 3 <= np.sqrt(lo * hi) <= 3 and np.abs(h[2, :2] / h[2, 2]).max() * SIDE < 0.5


def _inliers(xa: np.ndarray, da: np.ndarray, xb: np.ndarray, db: np.ndarray, need: int) -> int:
    """Matches of a in b that pass the ratio test and agree with one camera-like transform; when
    fewer than ``need`` pass the ratio test, their number (an upper bound: RANSAC is skipped)."""
    if len(da) < 2 or len(db) < 2:
        return 0
    knn = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(da, db, k=2)
    best: dict[int, cv2.DMatch] = {}  # one match per keypoint of b: repeated marks count once
    for m in knn:
        if len(m) < 2 or m[0].distance >= RATIO * m[1].distance:
            continue
        if m[0].trainIdx not in best or m[0].distance < best[m[0].trainIdx].distance:
            best[m[0].trainIdx] = m[0]
    good = list(best.values())
    if len(good) < 4:  # no homography from fewer
        return 0
    if len(good) < need:
        return len(good)
    src = xa[[m.queryIdx for m in good]].astype(np.float32)
    dst = xb[[m.trainIdx for m in good]].astype(np.float32)
    h, mask = cv2.findHomography(src, dst, cv2.RANSAC, RANSAC_PX, maxIters=RANSAC_ITERS)
    if mask is not None and _camera_like(h):
        return int(mask.sum())
    s, mask = cv2.estimateAffinePartial2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PX, maxIters=RANSAC_ITERS
    )
    if s is None or mask is None or not 1 / 3 <= np.sqrt(abs(np.linalg.det(s[:2, :2]))) <= 3:
        return 0
    return int(mask.sum())


def inliers(a: Local, b: Local, need: int = MIN_INLIERS) -> int:
    """Geometric agreement of two images: inliers of a against b, or against b's mirror image
    when the plain match falls short of ``need``. Below ``need`` the figure may be an upper
    bound (RANSAC is skipped when fewer than ``need`` matches pass the ratio test); ``need=0``:
    exact, both orientations."""
    plain = _inliers(a.xy, a.desc, b.xy, b.desc, need)
    if need and plain >= need:
        return plain
    return max(plain, _inliers(a.xy, a.desc, b.xy_m, b.desc_m, need))


def verify(
    pairs: np.ndarray,
    local: list[Local],
    min_inliers: int = MIN_INLIERS,
    min_keypoints: int = MIN_KEYPOINTS,
    threads: int = 2,
) -> np.ndarray:
    """Each pair's inlier count (rows of ``pairs`` index ``local``): at least ``min_inliers`` means
    one painting; -1 where an image has fewer than ``min_keypoints`` keypoints (no evidence).
    ``min_inliers=0``: every count exact (see :func:`inliers`), for threshold studies."""
    if not len(pairs):
        return np.zeros(0, np.int64)

    def one(p: list[int]) -> int:
        a, b = local[p[0]], local[p[1]]
        if min(a.n, b.n) < min_keypoints:
            return -1
        return inliers(a, b, min_inliers)

    cv2.setNumThreads(1)
    with ThreadPoolExecutor(max(1, threads)) as pool:  # OpenCV releases the GIL while matching
        return np.fromiter(pool.map(one, pairs.tolist()), np.int64, len(pairs))
