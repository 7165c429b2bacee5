"""The exported tagger on CoNLL-2003 dev (where the corpus is present): the ONNX artefact in
onnxruntime and the TorchScript one give the PyTorch tagger's tags on every dev sentence (a
network of the shipped NER sizes over the corpus's vocabularies, seeded random weights)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from chaincrf.data import TaggingDataModule
from chaincrf.data.readers import read_columns
from chaincrf.predict.export import export_model, graph_inputs
from chaincrf.predict.onnx_predictor import OnnxPredictor
from chaincrf.tagger import SequenceTagger

ROOT = Path(
    os.environ.get("CHAINCRF_DATA")
    or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(
        not (ROOT / "conll2003" / "eng.testa").is_file(), reason=f"no CoNLL-2003 under {ROOT}"
    ),
]


def test_exported_taggers_give_the_pytorch_tags_on_conll2003_dev(tmp_path, one_thread):
    pytest.importorskip("onnxruntime")
    datamodule = TaggingDataModule(
        root=str(ROOT), train="conll2003/eng.train", dev="conll2003/eng.testa", scheme="BIOES"
    )
    datamodule.setup("fit")
    torch.manual_seed(0)
    tagger = SequenceTagger.from_datamodule(
        datamodule,
        embeddings={"_target_": "chaincrf.network.embeddings.TokenEmbedder", "word_dim": 100},
        encoder={"_target_": "chaincrf.network.encoders.bilstm.BiLSTMEncoder", "hidden_size": 200},
    ).eval()
    predictor = tagger.predictor
    dev = [list(s.tokens) for s in read_columns(ROOT / "conll2003" / "eng.testa") if s.tokens]
    want = predictor.predict(dev)
    export_model(predictor, tmp_path / "onnx", "onnx")
    got = OnnxPredictor(tmp_path / "onnx", threads=1).predict(dev)
    assert len(got) == len(dev) == 3250
    assert [g.tags for g in got] == [w.tags for w in want]
    scripted = torch.jit.load(str(export_model(predictor, tmp_path / "ts", "torchscript")))
    with torch.no_grad():
        for lo in range(0, len(dev), 500):
            batch = predictor.encode(dev[lo : lo + 500])
            tags, _ = scripted(*graph_inputs(batch, 0))
            rows = predictor.tags.decode_batch(tags, batch["mask"])
            assert [predictor.tags.to_original(r) for r in rows] == [
                w.tags for w in want[lo : lo + 500]
            ]
