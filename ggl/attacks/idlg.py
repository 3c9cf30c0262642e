"""Improved Deep Leakage from Gradients: labels read off the last layer's gradient, then L-BFGS on pixels."""

from __future__ import annotations

from ggl.attacks.base import register_attack
from ggl.attacks.dlg import LBFGSGradientMatching


@register_attack("idlg")
class IDLG(LBFGSGradientMatching):
    """iDLG (Zhao, Mopuri, Bilen, "iDLG: Improved Deep Leakage from Gradients", 2020, arXiv 2001.02610).

    Labels are the target's known labels when given, otherwise ``ggl.fl.infer_labels`` on the received update
    (for one image the iDLG sign rule, exact for cross-entropy with non-negative features into the last layer).
    Only the dummy images are optimised, with L-BFGS and squared L2 gradient distance. Arguments: see
    ``LBFGSGradientMatching``.
    Shapes: reconstructs B images (B, C, H, W) for an update of B samples; labels (B,).

    Example:
        >>> rec = make_attack("idlg", seed=0).reconstruct(AttackTarget(model, update, image_shape=(1, 32, 32)))
    """

    optimise_labels = False
