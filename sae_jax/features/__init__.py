"""Feature statistics on a trained SAE: ReasonScore (which features fire on reasoning words)."""

from sae_jax.features.masks import MODES, PAPER_IGNORE_IDS, PAPER_WINDOW, ReasonMasks, reason_masks
from sae_jax.features.reasonscore import (EPS, PAPER_ALPHA, ReasonScoreAccumulator, ReasonScores,
                                          reasonscore_corpus, reasonscore_dense, scores_from_sums)
from sae_jax.features.vocab import DEFAULT_REASON_STRINGS, Vocabulary, group_key, load_reason_strings

__all__ = [
    "MODES", "PAPER_IGNORE_IDS", "PAPER_WINDOW", "ReasonMasks", "reason_masks", "EPS", "PAPER_ALPHA",
    "ReasonScoreAccumulator", "ReasonScores", "reasonscore_corpus", "reasonscore_dense", "scores_from_sums",
    "DEFAULT_REASON_STRINGS", "Vocabulary", "group_key", "load_reason_strings",
]
