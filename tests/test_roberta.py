"""The RoBERTa family through the whole pipeline (tiny random RobertaConfig), as BERT."""

import json

from test_cli import p2d_smoke


def test_roberta_smoke_pipeline(tmp_path):
    from transformers import AutoTokenizer, RobertaConfig, RobertaForMaskedLM

    from prune2deploy.model.load import resolve_model

    tok = AutoTokenizer.from_pretrained(
        resolve_model("minilm-l6")
    )  # any tokenizer of the right vocab: no RoBERTa one ships offline
    model = tmp_path / "tiny-roberta"
    cfg = RobertaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=130,
        type_vocab_size=1,
        pad_token_id=tok.pad_token_id,
    )
    RobertaForMaskedLM(cfg).save_pretrained(model)
    tok.save_pretrained(model)
    res = p2d_smoke("rotten_tomatoes", model, tmp_path / "run", "--sparsity", "0.6")
    assert res.returncode == 0, res.stderr[-3000:]
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    assert abs(rep["sparsity"]["encoder"] - 0.6) < 1e-3 and abs(rep["onnx"]["encoder_sparsity"] - 0.6) < 1e-3
    assert len(rep["sparsity"]["per_layer"]) == 2 * 6  # Q, K, V, attention out, FFN in, FFN out per layer
    assert all(k.startswith("roberta.encoder.") for k in rep["sparsity"]["per_layer"])
    assert rep["bench"] and all("p50_ms" in r for r in rep["bench"])
