"""Fréchet distance between image sets in the feature space of a pluggable network.

    FD = ||μ₁ − μ₂||² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½)        (Heusel et al. 2017, Eq. 6)

Only the exact TF-Inception "pt_inception-2015-12-05" network makes this *FID*; with any other
feature network the number is named after the data its features were trained on
(:func:`fd_name`: ``"FD-digits"``) and is comparable only to numbers from the same network.
Every generator FD should be reported beside :func:`fd_floor`, the FD between real train and test
images, i.e. what a perfect generator would score at that sample size.

Images enter as pixel-space float tensors N×C×H×W in [0, 1]. Training and caching the feature
net of FD-<dataset>, and the FD report, are plumbing: :mod:`trustdiff.train.feature_net`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from torch import nn

from ..errors import InputError
from ..images import check_images
from ..nets.classifier import SmallCNN

def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂), in float64.

    Args:
        mu1, mu2: means, shape [D]. sigma1, sigma2: covariances, shape [D, D]. Arrays or tensors.

    Raises:
        InputError: mismatched shapes, or a square root (Σ₁Σ₂)^½ with a significant imaginary part
            (usually too few samples for the feature dimension D).
    """
    mu1, mu2 = (np.atleast_1d(np.asarray(m, dtype=np.float64)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, dtype=np.float64)) for s in (sigma1, sigma2))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise InputError(
            f"frechet_distance: expected mu [D] and sigma [D, D] alike, got {mu1.shape}, "
            f"{sigma1.shape}, {mu2.shape}, {sigma2.shape}"
        )
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():  # singular product: nudge both diagonals
        offset = np.eye(d) * 1e-6
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.abs(np.diagonal(covmean).imag).max()
        if imag > 1e-3:
            raise InputError(
                f"frechet_distance: (Σ1 Σ2)^1/2 has imaginary part {imag:.3g} on its diagonal; "
                f"use more samples than the feature dimension {d}"
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def feature_stats(feature_fn, x: torch.Tensor, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of ``feature_fn`` over a pixel-space batch.

    Args:
        feature_fn: maps N×C×H×W in [0, 1] → N×D (a module in eval mode, or any callable).
        x: images N×C×H×W in [0, 1], N ≥ 2.

    Returns:
        (μ [D], Σ [D, D]) as float64 NumPy arrays; Σ is the unbiased (N − 1) covariance.
    """
    x = check_images(x)
    if len(x) < 2:
        raise InputError(f"feature_stats: expected at least 2 images, got {len(x)}")
    with torch.no_grad():
        f = torch.cat([feature_fn(x[i:i + batch_size]).reshape(len(x[i:i + batch_size]), -1)
                       for i in range(0, len(x), batch_size)])
    f = f.double().cpu().numpy()
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def fd(real_x: torch.Tensor, fake_x: torch.Tensor, feature_net: nn.Module, batch_size: int = 256) -> float:
    """Fréchet distance between two image sets, computed by torchmetrics'
    ``FrechetInceptionDistance(feature=feature_net)``.

    Args:
        real_x, fake_x: images N×C×H×W in [0, 1] (same C, H, W; N ≥ 2 each, N ≫ D for a stable
            estimate — FD is biased upwards by O(D / N)).
        feature_net: an ``nn.Module`` mapping N×C×H×W in [0, 1] → N×D, on the images' device
            (the metric is moved there, and the module with it); ideally with an int
            ``num_features`` attribute (:class:`FeatureNet` has one).

    Returns:
        FD ≥ 0 (float). Name it with :func:`fd_name`; report it beside :func:`fd_floor`.
    """
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError as e:  # e.g. torch-fidelity installed without torchvision breaks torchmetrics
        raise InputError(f"fd: torchmetrics.image.fid cannot be imported ({e}); "
                         "if torch-fidelity is installed without torchvision, uninstall it") from None
    real_x = check_images(real_x, name="real_x")
    fake_x = check_images(fake_x, name="fake_x", channels=real_x.shape[1], size=tuple(real_x.shape[-2:]))
    if len(real_x) < 2 or len(fake_x) < 2:
        raise InputError(f"fd: expected at least 2 images in each set, got {len(real_x)} and {len(fake_x)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"fd: expected batch_size >= 1, got {batch_size!r}")
    if not isinstance(feature_net, nn.Module):
        raise InputError(f"fd: feature_net must be an nn.Module (N×C×H×W → N×D), "
                         f"got {type(feature_net).__name__}")
    metric = FrechetInceptionDistance(
        feature=feature_net, normalize=True, input_img_size=tuple(real_x.shape[1:])
    ).to(real_x.device)
    for real, x in ((True, real_x), (False, fake_x)):
        for i in range(0, len(x), batch_size):
            metric.update(x[i:i + batch_size], real=real)
    return float(metric.compute())


def fd_name(dataset_name: str) -> str:
    """The plain name of an FD computed with a feature net trained on ``dataset_name``:
    ``fd_name("digits") == "FD-digits"``. Only the standard Inception network earns "FID"."""
    if not isinstance(dataset_name, str) or not dataset_name:
        raise InputError(f"fd_name: expected a non-empty data set name, got {dataset_name!r}")
    return f"FD-{dataset_name}"


def fd_floor(train_x: torch.Tensor, test_x: torch.Tensor, feature_net: nn.Module, batch_size: int = 256) -> float:
    """The FD between real train and test images (pixel space, N×C×H×W in [0, 1]): the score of a
    generator that reproduces the data distribution exactly. FD's bias depends on the sample
    sizes, so pass the same numbers of images as for the generator FD it is reported beside."""
    return fd(train_x, test_x, feature_net, batch_size=batch_size)


class FeatureNet(nn.Module):
    """The feature network of FD-<dataset>: a trained classifier's penultimate features.

    ``forward(x)``: x N×C×H×W in [0, 1] → N×D (``D = num_features``). Always in eval mode (like
    torchmetrics' ``NoTrainInceptionV3``), so features never depend on the batch.
    """

    def __init__(self, classifier: SmallCNN):
        super().__init__()
        self.classifier = classifier
        self.num_features = int(classifier.feature_dim)  # read by torchmetrics
        self.eval()

    def train(self, mode: bool = True) -> "FeatureNet":
        """Stay in eval mode whatever is asked."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x N×C×H×W in [0, 1] → features N×num_features."""
        return self.classifier.features(x)


class InceptionFeatureNet(nn.Module):
    """Pool-3 features (2048) of the standard FID network,
    :class:`trustdiff.nets.inception.FIDInceptionV3` with the pt_inception-2015-12-05 weights.

    ``forward(x)``: x N×C×H×W in [0, 1], C in {1, 3} (grey is repeated to RGB), any H×W →
    N×2048 float32 (on x's device, which must be the module's). Steps, as FID on images saved as PNG:

    1. pixels are clamped and rounded to the 256 uint8 levels, v = round(255·x);
    2. the image is resized to 299×299 bilinearly (skipped when it is 299×299 already);
    3. values are scaled to about [-1, 1]; 4. the network runs up to its final average pool.

    ``preprocess`` picks steps 2–3: ``"tf"`` (default) is TF 1.x ``resize_bilinear`` and
    (v − 128)/128, as inside the TF graph and torch-fidelity's "inception-v3-compat";
    ``"pytorch-fid"`` is ``F.interpolate(mode="bilinear", align_corners=False)`` and 2·v/255 − 1,
    as pytorch-fid. They give slightly different features (most for images not already
    299×299), so compare FIDs only within one choice.

    Always in eval mode, parameters frozen, so features never depend on the batch.
    """

    num_features = 2048  # read by torchmetrics
    PREPROCESS = ("tf", "pytorch-fid")

    def __init__(self, net: nn.Module, *, preprocess: str = "tf"):
        super().__init__()
        if preprocess not in self.PREPROCESS:
            raise InputError(f"preprocess: expected one of {', '.join(self.PREPROCESS)}, got {preprocess!r}")
        self.net = net
        self.preprocess = preprocess
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "InceptionFeatureNet":
        """Stay in eval mode whatever is asked."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x N×C×H×W in [0, 1] → features N×2048."""
        from ..nets.inception import INPUT_SIZE, resize_bilinear_tf1

        check_images(x, name="images", channels=(1, 3), check_range=False)
        dtype = next(self.net.parameters()).dtype
        v = (x.to(dtype).clamp(0, 1) * 255).round().expand(-1, 3, -1, -1)  # uint8 levels, as floats
        resize = tuple(x.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE)
        if self.preprocess == "tf":
            v = resize_bilinear_tf1(v, INPUT_SIZE) if resize else v
            v = (v - 128.0) / 128.0
        else:
            v = v / 255.0
            if resize:
                v = nn.functional.interpolate(v, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
            v = 2.0 * v - 1.0
        return self.net(v).float()


def inception_feature_net(weights_path, *, allow_pickle: bool = False, preprocess: str = "tf") -> InceptionFeatureNet:
    """The standard FID network, "pt_inception-2015-12-05", from a local weights file.

    Nothing is downloaded and neither torchvision nor torch-fidelity is needed. The published file
    ``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid; torch-fidelity's
    ``weights-inception-2015-12-05-6726825d.pth`` is the same file) is a pickle: load it with
    ``allow_pickle=True`` (``torch.load(weights_only=True)`` is tried first, which suffices for a
    plain state dict), or better convert it once with :func:`convert_inception_weights` and load the
    ``.safetensors`` without the flag.

    Args:
        weights_path: ``.safetensors`` (or a pickle with ``allow_pickle``).
        preprocess: ``"tf"`` or ``"pytorch-fid"``, see :class:`InceptionFeatureNet`.

    Returns:
        An :class:`InceptionFeatureNet` on the CPU, eval mode.

    Raises:
        InputError: the file is missing.
        UnsafeFileError: a pickle without ``allow_pickle``.
        CheckpointError: a corrupt file, or one that is not this network (strict: missing,
            unexpected or mis-shaped keys), in one line naming the file.

    Without the real file here, the strict load of that exact file and numerical agreement with
    TF-FID are not verified in this repository (names and shapes follow pytorch-fid's source).
    """
    from ..nets.inception import FIDInceptionV3, load_inception_state
    from ..persist import load_state_dict_file

    path = Path(weights_path)
    if not path.is_file():
        raise InputError(f"inception weights: no file at {path} (expected pt_inception-2015-12-05-6726825d.pth "
                         "or its conversion by convert_inception_weights)")
    if preprocess not in InceptionFeatureNet.PREPROCESS:
        raise InputError(f"preprocess: expected one of {', '.join(InceptionFeatureNet.PREPROCESS)}, got {preprocess!r}")
    state = load_state_dict_file(path, allow_pickle=allow_pickle)
    net = FIDInceptionV3()
    load_inception_state(net, state, source=path)
    return InceptionFeatureNet(net, preprocess=preprocess)


def convert_inception_weights(pth_path, out_safetensors) -> Path:
    """Convert the pickled pt_inception weights file once into ``out_safetensors`` (written
    atomically), so that :func:`inception_feature_net` loads it without ``allow_pickle``.

    The pickle is loaded with ``allow_pickle=True`` (``weights_only=True`` first) and checked
    strictly against the network before anything is written. The safetensors metadata records the
    source file name and its SHA-256; a warning is issued when that SHA-256 does not start with
    ``6726825d`` (the published file's name suffix, by torch.hub's naming convention).

    Returns:
        The output path. Raises InputError (missing input, output not ``.safetensors``) or
        CheckpointError (not this network), in one line.
    """
    import warnings

    from safetensors.torch import save

    from ..nets.inception import WEIGHTS_SHA256_PREFIX, FIDInceptionV3, load_inception_state
    from ..persist import atomic_write_bytes, load_state_dict_file, sha256_file

    src, out = Path(pth_path), Path(out_safetensors)
    if not src.is_file():
        raise InputError(f"inception weights: no file at {src}")
    if out.suffix.lower() != ".safetensors":
        raise InputError(f"convert_inception_weights: the output must end in .safetensors, got {out}")
    net = FIDInceptionV3()
    load_inception_state(net, load_state_dict_file(src, allow_pickle=True), source=src)
    digest = sha256_file(src)
    if not digest.startswith(WEIGHTS_SHA256_PREFIX):
        warnings.warn(f"{src}: SHA-256 {digest[:16]}… does not start with {WEIGHTS_SHA256_PREFIX}; it loads into the "
                      "network but may not be the published pt_inception-2015-12-05 weights", stacklevel=2)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    atomic_write_bytes(out, save(state, metadata={"source": src.name, "source_sha256": digest,
                                                  "network": "pt_inception-2015-12-05"}))
    return out
