"""Every name that crosses a boundary between training, export, serving and scoring.

One module, so that the exported signatures, the pipeline that builds them and
the clients that call them cannot disagree on a key. Derived names are built by
the helpers at the bottom, never by string formatting at call sites.
"""

# --- Raw features -----------------------------------------------------------
# The raw document: the only input a client ever sends.
TEXT_KEY = "text"
# The class name in training data; never an input of the exported model.
LABEL_KEY = "label"

# --- Vocabulary -------------------------------------------------------------
# TextVectorization reserves index 0 for padding and index 1 for this token.
PAD_TOKEN = ""
OOV_TOKEN = "[UNK]"
NUM_OOV_INDICES = 1

# --- Exported signatures ----------------------------------------------------
PREDICT_SIGNATURE = "serving_default"
CLASSIFY_SIGNATURE = "classify"
# TF Serving's Classify API requires the serialized-Example input to be named so.
CLASSIFY_INPUT = "inputs"
CLASSIFY_METHOD = "tensorflow/serving/classify"
PREDICT_METHOD = "tensorflow/serving/predict"

# Outputs of `serving_default`.
PROBABILITIES = "probabilities"
PREDICTED_LABEL = "label"
CLASS_ID = "class_id"
SCORE = "score"
PREDICT_OUTPUTS = (PROBABILITIES, PREDICTED_LABEL, CLASS_ID, SCORE)

# Outputs of `classify` (the names TF Serving's Classify API reads).
CLASSES = "classes"
SCORES = "scores"

# --- Files shipped inside the SavedModel's assets.extra/ ----------------------
ASSETS_EXTRA = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
MODEL_CARD_FILE = "model_card.json"
CONFIG_FILE = "config.toml"


def probability_key(label: str) -> str:
    """Column name for one class's probability in scored output, e.g. `p_sport`."""
    return f"p_{label}"
