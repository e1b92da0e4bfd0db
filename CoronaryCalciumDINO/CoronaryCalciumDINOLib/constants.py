"""Label convention shared by every file, array and segment of the project."""

from __future__ import annotations

#: Artery names in label order. Label value = index + 1; 0 is background.
ARTERIES: tuple[str, ...] = ("LM", "LAD", "LCX", "RCA")

#: label value -> artery name
LABEL_TO_ARTERY: dict[int, str] = {i + 1: name for i, name in enumerate(ARTERIES)}
#: artery name -> label value
ARTERY_TO_LABEL: dict[str, int] = {name: i + 1 for i, name in enumerate(ARTERIES)}

BACKGROUND = 0
NUM_CLASSES = len(ARTERIES) + 1  # background + 4 arteries

#: Display colours (RGB 0..1) for the artery segments, distinct and colour-blind friendly
#: (Okabe-Ito palette).
ARTERY_COLORS: dict[str, tuple[float, float, float]] = {
    "LM": (0.902, 0.624, 0.0),  # orange
    "LAD": (0.337, 0.706, 0.914),  # sky blue
    "LCX": (0.0, 0.620, 0.451),  # bluish green
    "RCA": (0.835, 0.369, 0.0),  # vermillion
}

#: Risk categories of the total Agatston score, in order.
RISK_CATEGORIES: tuple[str, ...] = ("0", "1-10", "11-100", "101-400", ">400")

#: Said of every result.
RESEARCH_ONLY = "Research use only; not a medical device."
#: Said in addition where a model produced the labels (AI mode).
MODEL_CAVEAT = "The default model is trained on synthetic studies and has not been validated on patient data."
#: The whole text, e.g. for the Slicer module panel, where the model may run.
DISCLAIMER = f"{RESEARCH_ONLY} {MODEL_CAVEAT}"


def disclaimer(model_ran: bool) -> str:
    """The disclaimer of one result: the model caveat only where a model produced the labels."""
    return DISCLAIMER if model_ran else RESEARCH_ONLY
