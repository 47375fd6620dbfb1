"""The paper's constants in one place: its corpora, its ReasonScore settings and vocabulary, its dashboards.

Galichin et al. (2025) and the reference code (AIRI-Institute/SAE-Reasoning). The SAE's own hyper-parameters are
the defaults of `sae_jax.sae.SAEConfig`; the configs in `configs/` read the rest from here.
"""

MODEL = "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"
D_IN, EXPANSION = 4096, 16  # its residual width and the SAE's expansion (4096 -> 65536 latents)

# Training: LMSYS-Chat-1M and OpenThoughts-114k in the DeepSeek template, packed separately, mixed half and half.
TRAINING_SOURCES = ("lmsys/lmsys-chat-1m#builder=lmsys,weight=1",
                    "open-thoughts/OpenThoughts-114k#builder=openthoughts,config=metadata,weight=1")
# The prepare scripts keep min(ceil(800M / 1024), len) rows: the released token set's 781,250 rows, 800M tokens.
# The run takes more (200,000 steps + 1,000 norm-estimate batches of 4096 = 823.3M activations), so SAELens
# started the data again after one pass, and so does the paper config (`activations.loop`): ~1.03 passes.
TRAINING_ROWS = 781_250

# ReasonScore's extraction set: the OpenThoughts 10k subset, rows shuffled as `datasets` does, the first 4096.
EXTRACTION_SOURCE = "open-thoughts/OpenThoughts-114k#builder=openthoughts_subset,config=metadata"
EXTRACTION_ROWS = 4096
EXTRACTION_SHUFFLE_SEED = 42
# `tokenize_and_concatenate`'s `datasets.map` processes: TL's default 10 in the training prepare scripts, 4 in
# compute_score.py / compute_dashboard.py (its 1000-doc batches restart at each process's shard).
TRAINING_NUM_PROC, EXTRACTION_NUM_PROC = 10, 4
DASHBOARD_ROWS = 10_000  # SAEDashboard read the first rows of the extraction set, unshuffled

# ReasonScore.
WINDOW = (1, 2)  # tokens added left and right of every matched token (`--expand_range 1,2`)
IGNORE_IDS = (128000, 128001)  # BOS, EOS of the Llama-3 vocabulary
ALPHA = 0.7  # entropy exponent
# In the reference's json order. "But" and "Another" appear only capitalised and without a leading space.
REASON_STRINGS = (
    "alternatively", " alternatively", "Alternatively", " Alternatively",
    "hmm", " hmm", "Hmm", " Hmm",
    "maybe", " maybe", "Maybe", " Maybe",
    "wait", " wait", "Wait", " Wait",
    "perhaps", " perhaps", "Perhaps", " Perhaps",
    "let me", " let me", "Let me", " Let me",
    "therefore", " therefore", "Therefore", " Therefore",
    "however", " however", "However", " However",
    "But",
    "Another",
)  # fmt: skip
