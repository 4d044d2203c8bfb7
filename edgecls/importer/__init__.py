"""`edgecls import`: a model trained elsewhere (Keras, TFLite, ONNX) in, a verified bundle out.

`api.import_model` picks the source by the file (`keras_source`, `onnx_source`, `tflite_source`); each
reads what the model says about its input (`request.ModelHints`), completes it with what the user declared
(`request.Declared`) and writes a bundle the rest of edgecls (predict, bench, flash, run) takes unchanged.
"""
