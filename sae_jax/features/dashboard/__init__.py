"""Feature dashboards: what each top ReasonScore feature fires on, as static HTML.

stats    one streaming pass over the rows: counts, histogram, top and quantile examples with their contexts
summary  in the same pass, the SAE as a whole (L0, dead/dense, explained variance) and co-activations; the
         nearest latents of each feature by decoder cosine and co-activation
lens     logit lens of the features' decoder rows
build    features.json: the statistics with token strings, logit lens and ReasonScore breakdown
html     index.html and one self-contained page per feature
"""

from sae_jax.features.dashboard.build import TokenText, build_dashboards
from sae_jax.features.dashboard.html import feature_filename, render_feature, render_index, top_words, write_dashboards
from sae_jax.features.dashboard.lens import logit_lens, unembedding
from sae_jax.features.dashboard.stats import (DashboardAccumulator, DashboardConfig, check_features,
                                              collect_feature_stats, sample_keys)

__all__ = [
    "TokenText", "build_dashboards", "feature_filename", "render_feature", "render_index", "top_words",
    "write_dashboards", "logit_lens", "unembedding", "DashboardAccumulator", "DashboardConfig", "check_features",
    "collect_feature_stats", "sample_keys",
]
