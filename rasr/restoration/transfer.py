"""Same-scene references: verify a retrieved reference geometrically, align it to the output, transfer its detail.

Retrieval finds references that mean the same thing; sometimes the gallery holds the very same scene (the
original scan of a web copy, the same print photographed again, another shot of a building). Then the
reference's real detail can replace what the generator made up, training-free, on the CPU:

    verify    SIFT (RootSIFT descriptors) on the input's bicubic view and on the LR itself, Lowe's ratio test,
              a MAGSAC homography per top-k candidate: the one with most inliers, at least MIN_INLIERS, spread
              over the frame and geometrically plausible, is a same-scene reference
    align     warp the reference by the homography into the output frame (anti-aliased), then DIS optical flow
              between the two at the LR's own resolution (both seen through the same x4 down-up) follows parallax
    confide   a mask: forward-backward flow consistency, agreement with the input at low frequencies (after a
              local colour match), inside the warped reference; blurred, so the blend has no seams
    transfer  output + mask * (reference high band * local contrast gain - output high band): fine detail from
              the reference, colour and illumination from the input; where the mask is zero, not one value changes

Gallery features are content-addressed (the reference's sha256) and cached beside the gallery
(`<db>/_features/<FEATURES>/ab/<id>.npz`): computed once per reference, not per query. The thresholds were set by
bench/instance_refs.py on real two-view photos and >= 20 different-scene negatives (see README, "Same-scene
references").
"""

from __future__ import annotations

import io
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from rasr import storage
from rasr.restoration import images

FEATURES = "rootsift-3000-1600px-v1"  # what a cached feature file holds: change it and the cache starts over
TRANSFER = "homography+dis-highband-v1"  # the transfer recipe, part of the config hash of runs that transfer
MAX_FEATURES = 3000
FEATURE_SIDE = 1600   # features are found on images at most this long (coordinates scaled back)
RATIO = 0.8           # Lowe's ratio test
RANSAC_PX = 4.0       # MAGSAC threshold, output pixels
# inliers for a same-scene verdict: different-scene pairs reached at most 9 when the threshold was chosen (22 photos
# against the 7 opencv-doc references) and 6 in bench/instance_refs.py's full run; same-scene pairs verified with 21-214
MIN_INLIERS = 15
MIN_SPREAD = 0.01     # the inliers' convex hull covers at least this fraction of the output
FLOW_PIXELS = 2_000_000  # optical flow at most at this many pixels (then upsampled)
FB_PX = 2.0           # forward-backward flow disagreement above this (output pixels): not confident
AGREE = 16.0          # low-frequency disagreement (8-bit levels) at which confidence reaches 0
SCALE = 4             # the down-up that separates the band an x4 input holds from the detail it lacks

_cv_threads = threading.Lock()


@dataclass
class Features:
    """Keypoints (N, 2) in the image's own pixel coordinates, SIFT descriptors (N, 128) uint8, image (h, w)."""

    points: np.ndarray
    descriptors: np.ndarray
    size: tuple[int, int]

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez_compressed(buf, points=self.points, descriptors=self.descriptors, size=np.array(self.size))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Features":
        z = np.load(io.BytesIO(data), allow_pickle=False)
        return cls(z["points"].astype(np.float32), z["descriptors"].astype(np.uint8), tuple(int(v) for v in z["size"]))

    def rootsift(self) -> np.ndarray:
        d = self.descriptors.astype(np.float32)
        return np.sqrt(d / (d.sum(1, keepdims=True) + 1e-7))


def _to8(a: np.ndarray) -> np.ndarray:
    """8-bit pixels of an 8- or 16-bit image (images.to_8bit: the one conversion between the depths)."""
    return images.to_8bit(a) if a.dtype == np.uint16 else a


def _gray(rgb: np.ndarray) -> np.ndarray:
    rgb = _to8(rgb)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb


def features(rgb: np.ndarray, max_side: int = FEATURE_SIDE) -> Features:
    """SIFT keypoints and descriptors of an image, found at most `max_side` long, in its own pixel coordinates."""
    g = _gray(rgb)
    h, w = g.shape
    s = min(1.0, max_side / max(h, w))
    if s < 1.0:
        g = cv2.resize(g, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    kps, desc = cv2.SIFT_create(nfeatures=MAX_FEATURES).detectAndCompute(g, None)
    if desc is None or not kps:
        return Features(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8), (h, w))
    pts = np.array([k.pt for k in kps], np.float32) / s
    return Features(pts, np.clip(desc + 0.5, 0, 255).astype(np.uint8), (h, w))


def upscale(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """PIL bicubic to (h, w): the input's bicubic view, the frame of the output."""
    h, w = size
    return np.asarray(Image.fromarray(_to8(rgb)).resize((w, h), Image.BICUBIC))


def query_features(lr: np.ndarray, scale: int) -> list[Features]:
    """The input's features for verification, in output pixel coordinates: on its bicubic view (x `scale`) and on
    the LR itself; each candidate is tried against both. Matching the bicubic view, not the generator's output,
    keeps invented texture from starving the match."""
    h, w = lr.shape[:2]
    out = (h * scale, w * scale)
    s = min(1.0, FEATURE_SIDE / max(out))
    view = upscale(lr, (max(1, round(out[0] * s)), max(1, round(out[1] * s))))
    a = features(view)
    a.points /= s
    a.size = out
    b = features(lr)
    b.points *= scale
    b.size = out
    return [a, b]


@dataclass
class Match:
    """A verified same-scene reference: `homography` maps its pixel coordinates into the output's."""

    index: int           # its rank among the retrieved candidates
    ref_id: str
    ref_uri: str
    homography: np.ndarray
    inliers: int


def match_pair(query: Features, ref: Features) -> tuple[np.ndarray | None, int, np.ndarray | None]:
    """(homography ref -> query, inlier count, inlier query points) by ratio test + MAGSAC; (None, n, None) if none."""
    if len(query.points) < 4 or len(ref.points) < 4:
        return None, 0, None
    with _cv_threads:
        pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(query.rootsift(), ref.rootsift(), k=2)
    good = [m for m, n in (p for p in pairs if len(p) == 2) if m.distance < RATIO * n.distance]
    if len(good) < 8:
        return None, 0, None
    src = ref.points[[m.trainIdx for m in good]]
    dst = query.points[[m.queryIdx for m in good]]
    cv2.setRNGSeed(0)  # MAGSAC samples at random: the same inputs give the same homography, run after run
    H, inl = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, RANSAC_PX, maxIters=10000, confidence=0.999)
    if H is None or inl is None:
        return None, 0, None
    keep = inl.ravel().astype(bool)
    return H, int(keep.sum()), dst[keep]


def plausible(H: np.ndarray, ref_size: tuple[int, int], out_size: tuple[int, int], pts: np.ndarray) -> str | None:
    """Why a homography cannot be a view of the same scene (None: it can): folded, degenerate, off the frame, or
    supported only by a cluster of points."""
    rh, rw = ref_size
    oh, ow = out_size
    corners = np.float32([[0, 0], [rw, 0], [rw, rh], [0, rh]]).reshape(-1, 1, 2)
    quad = cv2.perspectiveTransform(corners, H)
    if not np.all(np.isfinite(quad)) or not cv2.isContourConvex(quad.astype(np.float32)):
        return "the reference would be folded"
    a = H[:2, :2] / H[2, 2]
    det = float(np.linalg.det(a))
    if det <= 0 or not (1 / 1024 < det < 1024):
        return "degenerate scale"
    frame = np.float32([[0, 0], [ow, 0], [ow, oh], [0, oh]])
    inter, _ = cv2.intersectConvexConvex(quad.reshape(-1, 2).astype(np.float32), frame)
    if inter < 0.02 * ow * oh:
        return "the reference covers under 2% of the output"
    if len(pts) < 3 or cv2.contourArea(cv2.convexHull(pts.astype(np.float32))) < MIN_SPREAD * ow * oh:
        return "the matches are all in one spot"
    return None


def verify(queries: list[Features], candidates: list[tuple[str, str, Features]],
           min_inliers: int = MIN_INLIERS) -> tuple[Match | None, int]:
    """The plausible candidate (id, uri, features) with most inliers, if it has `min_inliers`; and the most inliers
    any candidate reached, plausible or not (what the threshold is measured against)."""
    best, best_n, most = None, 0, 0
    for i, (rid, uri, feats) in enumerate(candidates):
        for q in queries:
            H, n, pts = match_pair(q, feats)
            most = max(most, n)
            if H is None or n < min_inliers or n <= best_n:
                continue
            if plausible(H, feats.size, q.size, pts) is None:
                best, best_n = Match(i, rid, uri, H, n), n
    return best, most


class FeatureCache:
    """Gallery features by reference id: in memory (LRU), then `<db>/_features/`, else computed and stored there."""

    def __init__(self, db: str | None, max_items: int = 256, tmp_dir: str | None = None):
        self.root = storage.join(db, "_features", FEATURES) if db else None
        self.max_items, self.tmp_dir = max_items, tmp_dir
        self._mem: OrderedDict[str, Features] = OrderedDict()
        self._lock = threading.Lock()
        self.computed = self.loaded = 0

    def uri(self, ref_id: str) -> str | None:
        return storage.join(self.root, ref_id[:2], f"{ref_id}.npz") if self.root else None

    def get(self, ref_id: str, ref_uri: str) -> Features:
        with self._lock:
            if ref_id in self._mem:
                self._mem.move_to_end(ref_id)
                return self._mem[ref_id]
        f = self._load(ref_id)
        if f is None:
            f = features(images.decode_image(storage.read_bytes(ref_uri), max_pixels=1 << 62).rgb)
            self.computed += 1
            self._store(ref_id, f)
        with self._lock:
            self._mem[ref_id] = f
            while len(self._mem) > self.max_items:
                self._mem.popitem(last=False)
        return f

    def _load(self, ref_id: str) -> Features | None:
        uri = self.uri(ref_id)
        if uri is None:
            return None
        try:
            f = Features.from_bytes(storage.read_bytes(uri))
        except Exception:  # noqa: BLE001 - absent or unreadable: computed again (and rewritten)
            return None
        self.loaded += 1
        return f

    def _store(self, ref_id: str, f: Features) -> None:
        uri = self.uri(ref_id)
        if uri is None:
            return
        try:
            storage.write_bytes(uri, f.to_bytes(), self.tmp_dir)
        except Exception:  # noqa: BLE001 - a read-only gallery: features stay in memory for this worker
            self.root = None


# ---- transfer ---------------------------------------------------------------------------------------------------


@dataclass
class Transfer:
    pixels: np.ndarray   # the output, at the generator output's depth
    mask: np.ndarray     # (h, w) float32 confidence in [0, 1]
    aligned: np.ndarray  # (h, w, 3) uint8 the reference aligned to the output
    coverage: float      # fraction of the output where the confidence is at least 0.5


def _as_float(a: np.ndarray) -> np.ndarray:
    """0..255 float32 from uint8 or uint16 pixels."""
    return a.astype(np.float32) / (257.0 if a.dtype == np.uint16 else 1.0)


def _resize_f(a: np.ndarray, w: int, h: int) -> np.ndarray:
    """PIL bicubic (antialiased when shrinking) of a float image, channel by channel."""
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(a[..., c])).resize((w, h), Image.BICUBIC))
             for c in range(a.shape[2])]
    return np.stack(chans, -1)


def low_band(a: np.ndarray, k: int = SCALE) -> np.ndarray:
    """What an x`k` input can hold of `a`: bicubic down by k, then back up."""
    h, w = a.shape[:2]
    return _resize_f(_resize_f(a, max(1, w // k), max(1, h // k)), w, h)


def _local_stats(a: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    mu = cv2.GaussianBlur(a, (0, 0), sigma)
    var = cv2.GaussianBlur(a * a, (0, 0), sigma) - mu * mu
    return mu, np.sqrt(np.maximum(var, 1.0))


def _anti_aliased(ref: np.ndarray, H: np.ndarray, out_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The reference shrunk (area) when it holds more pixels than it covers in the output, and H adjusted to it."""
    oh, ow = out_size
    x, y = ow / 2, oh / 2
    p = cv2.perspectiveTransform(np.float32([[[x, y], [x + 1, y], [x, y + 1]]]), np.linalg.inv(H))[0]
    jac = abs(float(np.cross(p[1] - p[0], p[2] - p[0])))  # reference pixels per output pixel (area)
    r = math.sqrt(jac)
    if r <= 1.25:
        return ref, H
    h, w = ref.shape[:2]
    nw, nh = max(1, round(w / r)), max(1, round(h / r))
    small = cv2.resize(ref, (nw, nh), interpolation=cv2.INTER_AREA)
    S = np.diag([w / nw, h / nh, 1.0])  # small pixel -> reference pixel
    return small, H @ S


def transfer(output: np.ndarray, lr: np.ndarray, ref: np.ndarray, H: np.ndarray, band: int | None = None) -> Transfer:
    """Detail of `ref` (8-bit RGB, any size), aligned by `H` (ref -> output pixels) and optical flow, blended into
    `output` (the generator's, 8 or 16 bits) where it agrees with `lr` (the input); elsewhere `output` as it was.
    `band`: the down-up factor separating the input's band from the reference's detail (default: matched to the
    input's blur, `matching_band`)."""
    oh, ow = output.shape[:2]
    ref, H = _anti_aliased(_to8(ref), H, (oh, ow))
    warped = cv2.warpPerspective(ref, H, (ow, oh), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    inside = cv2.warpPerspective(np.full(ref.shape[:2], 255, np.uint8), H, (ow, oh), flags=cv2.INTER_NEAREST)
    inside = cv2.erode(inside, np.ones((9, 9), np.uint8))
    view = upscale(lr, (oh, ow)).astype(np.float32)  # the input's own band, in the output frame
    scale = band or matching_band(view, warped.astype(np.float32), inside > 0, oh // lr.shape[0])
    flow_fwd, fb = _flow(view, low_band(warped.astype(np.float32), scale))
    gx, gy = np.meshgrid(np.arange(ow, dtype=np.float32), np.arange(oh, dtype=np.float32))
    mx, my = gx + flow_fwd[..., 0], gy + flow_fwd[..., 1]
    aligned = cv2.remap(warped, mx, my, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    inside = cv2.remap(inside, mx, my, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT) > 0
    al = aligned.astype(np.float32)
    al_low = low_band(al, scale)
    # colour and illumination from the input: the reference's detail scaled by the local contrast ratio
    mu_v, sd_v = _local_stats(view, 7.0)
    mu_r, sd_r = _local_stats(al_low, 7.0)
    gain = np.clip(sd_v / sd_r, 0.5, 2.0)
    err = np.abs((al_low - mu_r) * gain + mu_v - view).mean(-1)
    err = cv2.GaussianBlur(err, (0, 0), 2.0)
    mask = np.clip(1.0 - err / AGREE, 0.0, 1.0) * (fb < FB_PX) * inside
    mask = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 3.0)
    mask[mask < 1e-3] = 0.0  # where nothing is taken, nothing changes (not even by rounding)
    out = _as_float(output)
    delta = mask[..., None] * ((al - al_low) * gain - (out - low_band(out, scale)))
    touched = mask > 0
    res = output.copy()
    if output.dtype == np.uint16:
        res[touched] = np.clip((out[touched] + delta[touched]) * 257.0 + 0.5, 0, 65535).astype(np.uint16)
    else:
        res[touched] = np.clip(out[touched] + delta[touched] + 0.5, 0, 255).astype(np.uint8)
    return Transfer(res, mask, aligned, float((mask >= 0.5).mean()))


def matching_band(view: np.ndarray, warped: np.ndarray, inside: np.ndarray, scale: int) -> int:
    """The down-up factor at which the reference looks as blurred as the input's view: `scale` for a clean x`scale`
    input; more for a blurred, noisy one (Real-ESRGAN-like degradations), whose own band ends lower. The smallest
    factor within 3% of the best agreement (mean absolute difference where the reference lies)."""
    if inside.sum() < 64:
        return scale
    errs = {k: float(np.abs(low_band(warped, k) - view).mean(-1)[inside].mean())
            for k in (scale, round(scale * 1.25), round(scale * 1.5))}
    best = min(errs.values())
    return min(k for k, e in errs.items() if e <= 1.03 * best)


def _flow(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DIS flow a -> b (output pixels) and its forward-backward disagreement, computed at most at FLOW_PIXELS."""
    oh, ow = a.shape[:2]
    s = min(1.0, math.sqrt(FLOW_PIXELS / (oh * ow)))
    ga, gb = (cv2.cvtColor(np.clip(x + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_RGB2GRAY) for x in (a, b))
    if s < 1.0:
        size = (max(8, round(ow * s)), max(8, round(oh * s)))
        ga, gb = (cv2.resize(x, size, interpolation=cv2.INTER_AREA) for x in (ga, gb))
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    f_ab = dis.calc(ga, gb, None)
    f_ba = dis.calc(gb, ga, None)
    h, w = ga.shape
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    back = cv2.remap(f_ba, gx + f_ab[..., 0], gy + f_ab[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    fb = np.hypot(*(f_ab + back).transpose(2, 0, 1))
    if s < 1.0:
        f_ab = cv2.resize(f_ab, (ow, oh), interpolation=cv2.INTER_LINEAR) * np.float32([ow / w, oh / h])
        fb = cv2.resize(fb, (ow, oh), interpolation=cv2.INTER_LINEAR) * (ow / w)
    return f_ab, fb
