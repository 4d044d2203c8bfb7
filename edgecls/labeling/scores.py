"""`--bundle`: score the captures with a bundle through edgecls.runtime (the newer model's view of each frame)."""

from __future__ import annotations

import logging

from edgecls.runtime.errors import DataError

log = logging.getLogger("edgecls.labeling")


def bundle_scorer(bundle, top_k: int = 5):
    """(scorer, labels, model): scorer(paths) -> [(top-1 score, [(label, score)])] for LabelStore."""
    from edgecls.runtime.classifier import Classifier

    classifier = Classifier(bundle, top_k=top_k)

    def score_one(path) -> tuple:
        try:
            prediction = classifier.classify_file(path)
        except DataError as exc:  # a corrupt or half-written frame: shown as "no score", to discard or label
            log.warning("label: cannot score %s: %s", path, exc)
            return None, []
        return float(prediction.score), [(label, float(s)) for label, s in prediction.topk]

    def score(paths) -> list:
        return [score_one(path) for path in paths]

    manifest = classifier.bundle.manifest
    model = {
        "bundle": str(classifier.bundle.root),
        "version": manifest.created or "",
        "artifact": classifier.artifact.name,
    }
    return score, list(classifier.labels), model
