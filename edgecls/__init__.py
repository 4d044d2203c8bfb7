"""edgecls: train Keras image classifiers, convert them for edge devices, run them without TensorFlow.

The public API is importable without TensorFlow; heavy modules load on first use:

    from edgecls.train import TrainConfig, train
    from edgecls.evaluate import evaluate_run
"""

__version__ = "0.3.0"
