"""edgecls runtime: what a device installs. Never imports TensorFlow or Keras."""

from edgecls.runtime.errors import EdgeclsError
from edgecls.runtime.preprocess import PreprocessSpec, decode_image, load_image, preprocess

__all__ = ["EdgeclsError", "PreprocessSpec", "decode_image", "load_image", "preprocess"]
