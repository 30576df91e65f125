"""Fréchet texture distance (FTD): a distribution metric for CT slices that needs no network weights.

FID compares Inception features, whose ImageNet weights cannot be fetched offline; Fréchet Radiomics Distance
(``frd-score``) needs ``pyradiomics``, whose PyPI release does not install on Python >= 3.10. FTD keeps FRD's
idea with a small hand-made radiomics-style feature set computed by scikit-image inside the body (label > 0):

- first order (8): mean, standard deviation, skewness, excess kurtosis, 10th / 50th / 90th percentile, entropy of
  a 32-bin histogram over the window;
- grey-level co-occurrence (GLCM, 32 levels, body voxels only, symmetric, mean over 4 angles) at distances 1 and
  2 (12): contrast, dissimilarity, homogeneity, energy, correlation, ASM;
- sharpness (2): mean Sobel gradient magnitude, variance of the Laplacian (blurred samples score low).

Every feature is standardised (z-score) over the pooled real and synthetic slices, then the Fréchet distance of the
two Gaussians (MONAI's ``get_fid_score``) is taken: 0 for identical feature statistics, bounded for disjoint sets
(a real-set-only scale explodes when a feature hardly varies over the real slices, as on small phantom test sets).
Values rank methods on one test set; they are not on the scale of published FIDs.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics.fid import get_fid_score
from scipy import ndimage, stats
from skimage.feature import graycomatrix, graycoprops

__all__ = ["FEATURE_NAMES", "texture_features", "frechet_texture_distance"]

_GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")
_DISTANCES = (1, 2)
_LEVELS = 32
FEATURE_NAMES = (
    ["mean", "std", "skewness", "kurtosis", "p10", "p50", "p90", "entropy"]
    + [f"glcm_{p}_d{d}" for d in _DISTANCES for p in _GLCM_PROPS]
    + ["gradient_mean", "laplacian_var"]
)


def _glcm(q: np.ndarray, body: np.ndarray) -> list[float]:
    """GLCM properties of body voxels only: outside voxels get level 0, whose row and column are dropped."""
    img = np.where(body, q + 1, 0).astype(np.uint8)
    p = graycomatrix(img, distances=list(_DISTANCES), angles=[0, np.pi / 4, np.pi / 2, 3 * np.pi / 4],
                     levels=_LEVELS + 1, symmetric=True)[1:, 1:].astype(np.float64)
    p /= np.maximum(p.sum(axis=(0, 1), keepdims=True), 1e-12)
    out = []
    for di in range(len(_DISTANCES)):
        sub = p[:, :, di : di + 1]
        out.extend(float(np.nan_to_num(graycoprops(sub, prop).mean())) for prop in _GLCM_PROPS)
    return out


def texture_features(images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> np.ndarray:
    """Radiomics-style features of slices (see module docstring).

    Args:
        images: (N, 1, H, W) or (N, H, W) slices in [-1, 1] (the model range of the window).
        labels: same spatial shape, class ids (or (N, K, H, W) one-hot); the body is ``label > 0``.
    Returns:
        (N, 22) float64, columns :data:`FEATURE_NAMES`.
    """
    x = torch.as_tensor(images).detach().float().cpu().numpy()
    lab = torch.as_tensor(labels).detach().cpu()
    lab = (lab.argmax(1) if lab.ndim == 4 and lab.shape[1] > 1 else lab.reshape(lab.shape[0], *lab.shape[-2:])).numpy()
    x = (np.clip(x.reshape(x.shape[0], *x.shape[-2:]), -1, 1) + 1) / 2
    feats = []
    for img, lb in zip(x, lab):
        body = lb > 0
        if body.sum() < 2:
            body = np.ones_like(body)
        v = img[body]
        hist = np.histogram(v, bins=_LEVELS, range=(0, 1))[0] / v.size
        first = [v.mean(), v.std(), stats.skew(v), stats.kurtosis(v), *np.percentile(v, [10, 50, 90]),
                 -(hist[hist > 0] * np.log2(hist[hist > 0])).sum()]
        q = np.minimum((img * _LEVELS).astype(int), _LEVELS - 1)
        grad = np.hypot(ndimage.sobel(img, 0), ndimage.sobel(img, 1))[body]
        sharp = [grad.mean(), ndimage.laplace(img)[body].var()]
        feats.append(np.nan_to_num(np.asarray([*first, *_glcm(q, body), *sharp], np.float64)))
    return np.stack(feats) if feats else np.zeros((0, len(FEATURE_NAMES)))


def frechet_texture_distance(fake_features: np.ndarray, real_features: np.ndarray) -> float:
    """Fréchet distance of the two feature sets after standardising both with the pooled mean and std.

    Args:
        fake_features, real_features: (N, F) and (M, F) from :func:`texture_features`, N, M >= 2.
    """
    fake, real = np.asarray(fake_features, np.float64), np.asarray(real_features, np.float64)
    if fake.shape[0] < 2 or real.shape[0] < 2:
        raise ValueError(f"FTD needs at least 2 slices per set, got {fake.shape[0]} and {real.shape[0]}")
    pooled = np.concatenate([fake, real])
    mu, sd = pooled.mean(0), pooled.std(0)
    sd = np.where(sd > 1e-12, sd, 1.0)  # a feature constant over both sets contributes nothing
    z = lambda a: torch.from_numpy((a - mu) / sd)  # noqa: E731
    return float(get_fid_score(z(fake), z(real)))
