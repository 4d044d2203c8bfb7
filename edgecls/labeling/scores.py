"""`--bundle`: score the captures with a bundle through edgecls.runtime (the newer model's view of each frame)."""

from __future__ import annotations


def bundle_scorer(bundle, top_k: int = 5):
    """(scorer, labels, model): scorer(paths) -> [(top-1 score, [(label, score)])] for LabelStore."""
    from edgecls.runtime.classifier import Classifier

    classifier = Classifier(bundle, top_k=top_k)

    def score(paths) -> list:
        predictions = [classifier.classify_file(path) for path in paths]
        return [(float(p.score), [(label, float(s)) for label, s in p.topk]) for p in predictions]

    manifest = classifier.bundle.manifest
    model = {
        "bundle": str(classifier.bundle.root),
        "version": manifest.created or "",
        "artifact": classifier.artifact.name,
    }
    return score, list(classifier.labels), model
