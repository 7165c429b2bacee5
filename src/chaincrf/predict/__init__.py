"""Prediction: tagged sentences out of a trained network, in bounded time and memory.

- :mod:`~chaincrf.predict.streaming`: streams in, input order out, whatever engine tags;
- :mod:`~chaincrf.predict.predictor`: the PyTorch engine (confidences, top-k);
  :mod:`~chaincrf.predict.onnx_predictor` (with :mod:`~chaincrf.predict.onnx_model`): the ONNX
  Runtime engine, without torch;
- :mod:`~chaincrf.predict.tokenizers`: raw text to tokens with offsets;
  :mod:`~chaincrf.predict.outputs`: the output types;
- :mod:`~chaincrf.predict.export`: the network as one TorchScript or ONNX graph;
- :mod:`~chaincrf.predict.bundle`: a model file in, a tagger or a predictor out, and bundles
  written; :mod:`~chaincrf.predict.hub`: the Hugging Face Hub layout;
  :mod:`~chaincrf.predict.serving`: load / save / predict on the tagger.
"""
