"""edgecls runtime: what a device installs. Never imports TensorFlow or Keras."""

from runtime.errors import EdgeclsError
from runtime.preprocess import PreprocessSpec, decode_image, load_image, preprocess

__all__ = ["EdgeclsError", "PreprocessSpec", "decode_image", "load_image", "preprocess"]
