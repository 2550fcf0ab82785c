"""Evaluation metrics."""

from genflow.metrics._distances import (
    DEFAULT_MMD_SCALES as DEFAULT_MMD_SCALES,
    MixtureComponentReport as MixtureComponentReport,
    energy_distance as energy_distance,
    mixture_component_report as mixture_component_report,
    mmd as mmd,
    sliced_wasserstein2 as sliced_wasserstein2,
    sliced_wasserstein2_floor as sliced_wasserstein2_floor,
)
from genflow.metrics._fallback_features import (
    DigitsMLPFeatures as DigitsMLPFeatures,
    digits_feature_extractor as digits_feature_extractor,
    train_digits_mlp as train_digits_mlp,
)
from genflow.metrics._fid import (
    INCEPTION_FID_NAME as INCEPTION_FID_NAME,
    FeatureExtractor as FeatureExtractor,
    extract_features as extract_features,
    feature_statistics as feature_statistics,
    frechet_distance as frechet_distance,
    frechet_distance_from_features as frechet_distance_from_features,
    frechet_label as frechet_label,
    kid as kid,
)
from genflow.metrics._likelihood import (
    LikelihoodResult as LikelihoodResult,
    bits_per_dim as bits_per_dim,
    dequantize as dequantize,
    log_likelihood as log_likelihood,
    log_likelihood_from_velocity as log_likelihood_from_velocity,
    log_prob_to_bits_per_dim as log_prob_to_bits_per_dim,
    marginal_log_prob as marginal_log_prob,
)
from genflow.metrics._sharpness import (
    coverage as coverage,
    format_sharpness as format_sharpness,
    kde_bandwidth as kde_bandwidth,
    kde_cv_bandwidth as kde_cv_bandwidth,
    kde_log_likelihood as kde_log_likelihood,
    sharpness_report as sharpness_report,
    support_fraction as support_fraction,
)
from genflow.metrics._ode_sde_gap import (
    OdeSdeGap as OdeSdeGap,
    ode_sde_gap as ode_sde_gap,
    residual_profile as residual_profile,
)

__all__ = [
    "DEFAULT_MMD_SCALES",
    "DigitsMLPFeatures",
    "FeatureExtractor",
    "INCEPTION_FID_NAME",
    "LikelihoodResult",
    "MixtureComponentReport",
    "OdeSdeGap",
    "bits_per_dim",
    "coverage",
    "dequantize",
    "digits_feature_extractor",
    "energy_distance",
    "extract_features",
    "feature_statistics",
    "format_sharpness",
    "frechet_distance",
    "frechet_distance_from_features",
    "frechet_label",
    "kde_bandwidth",
    "kde_cv_bandwidth",
    "kde_log_likelihood",
    "kid",
    "log_likelihood",
    "log_likelihood_from_velocity",
    "log_prob_to_bits_per_dim",
    "marginal_log_prob",
    "mixture_component_report",
    "mmd",
    "ode_sde_gap",
    "residual_profile",
    "sharpness_report",
    "sliced_wasserstein2",
    "sliced_wasserstein2_floor",
    "support_fraction",
    "train_digits_mlp",
]
