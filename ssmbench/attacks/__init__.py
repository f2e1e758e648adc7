"""Linf attacks on images in [0, 1], and the suites that compose them into a worst-case evaluation.

One job a module, in the torchattacks manner: `base` (the Attack class that enforces the threat
model, its settings and result), `pgd` (PGD, FGSM), `autoattack` (AutoAttack's attacks from the
official code or torchattacks) and `suites` (worst-case composition and the suite registry).

    >>> suite = build_suite("pgd10", AttackSettings(eps=8 / 255))
    >>> result = suite.run(model, images, labels)
    >>> result.robust_acc, result.per_attack        # 0.62, {"pgd10": 0.62}
"""

from ssmbench.attacks.base import (
    AUTOATTACK_VERSIONS,
    BACKENDS,
    BOX_SUFFIXES,
    THREAT_MODEL,
    Attack,
    AttackHook,
    AttackResult,
    AttackSettings,
    eval_mode,
    predict,
    threat_model_name,
)
from ssmbench.attacks.pgd import FGSM, PGD
from ssmbench.attacks.suites import (
    SUITES,
    FlagAccuracies,
    Suite,
    SuiteFactory,
    SuiteResult,
    SuiteSpec,
    build_suite,
    get_suite_spec,
    register_suite,
    suite_backend,
    suite_label,
)

__all__ = [
    "AUTOATTACK_VERSIONS",
    "BACKENDS",
    "FGSM",
    "PGD",
    "SUITES",
    "THREAT_MODEL",
    "BOX_SUFFIXES",
    "Attack",
    "AttackHook",
    "AttackResult",
    "AttackSettings",
    "FlagAccuracies",
    "Suite",
    "SuiteFactory",
    "SuiteResult",
    "SuiteSpec",
    "build_suite",
    "eval_mode",
    "get_suite_spec",
    "predict",
    "register_suite",
    "suite_backend",
    "suite_label",
    "threat_model_name",
]
