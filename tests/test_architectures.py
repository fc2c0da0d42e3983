"""Other BERT-family architectures through their adapters: exact at full retention, FLOPs counted right,
rows independent of their batch, heads that read every vector refused."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    AlbertConfig,
    AlbertForMaskedLM,
    AlbertForPreTraining,
    AlbertForQuestionAnswering,
    AlbertForSequenceClassification,
    AlbertForTokenClassification,
    AlbertModel,
    CamembertConfig,
    CamembertForMaskedLM,
    CamembertForSequenceClassification,
    Data2VecTextConfig,
    Data2VecTextForSequenceClassification,
    DistilBertConfig,
    DistilBertForMaskedLM,
    DistilBertForQuestionAnswering,
    DistilBertForSequenceClassification,
    DistilBertForTokenClassification,
    ElectraConfig,
    ElectraForSequenceClassification,
    ModernBertConfig,
    ModernBertForMaskedLM,
    ModernBertForMultipleChoice,
    ModernBertForQuestionAnswering,
    ModernBertForSequenceClassification,
    ModernBertForTokenClassification,
    ModernBertModel,
    RobertaConfig,
    RobertaForMultipleChoice,
    RobertaForSequenceClassification,
)

from powerbert_kernels import apply_power_bert, model_flops, remove_power_bert
from powerbert_kernels.benchmarking import CONFIGS
from powerbert_kernels.cli import main

SMALL = dict(
    hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128, max_position_embeddings=64
)


def roberta():
    return RobertaForSequenceClassification(RobertaConfig(**SMALL, num_labels=3, attn_implementation="eager"))


def electra():
    # embedding_size below hidden_size: the model projects its embeddings.
    return ElectraForSequenceClassification(
        ElectraConfig(**SMALL, embedding_size=32, num_labels=2, attn_implementation="eager")
    )


def batch_for(config, side: str, B: int = 3, N: int = 19):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, config.vocab_size, (B, N), generator=g)
    lengths = torch.tensor([N, 7, 2])
    pos = torch.arange(N)[None]
    mask = (pos < lengths[:, None]) if side == "right" else (pos >= (N - lengths)[:, None])
    ids = ids.masked_fill(~mask, config.pad_token_id)
    ids[torch.arange(B), (N - lengths) if side == "left" else 0] = 0  # <s> / [CLS]
    return {"input_ids": ids, "attention_mask": mask.long()}


@pytest.mark.parametrize("make", [roberta, electra])
@pytest.mark.parametrize("side", ["right", "left"])
def test_full_retention_equals_stock(make, side):
    torch.manual_seed(0)
    model = make().eval()
    inputs = batch_for(model.config, side)
    patched = apply_power_bert(copy.deepcopy(model), [1.0, 1.0, 1.0])
    with torch.no_grad():
        want, got = model(**inputs), patched(**inputs)
    assert (got.logits - want.logits).abs().max() <= 1e-5


@pytest.mark.parametrize("make", [roberta, electra])
def test_pruned_flops_match_flop_counter(make):
    torch.manual_seed(0)
    model = make().eval()
    inputs = batch_for(model.config, "right")
    retention = [12, 6, 2]
    with torch.no_grad(), FlopCounterMode(display=False) as stock:
        model(**inputs)
    assert stock.get_total_flops() == model_flops(model, 3, 19)
    apply_power_bert(model, retention)
    with torch.no_grad(), FlopCounterMode(display=False) as pruned:
        out = model(**inputs)
    assert pruned.get_total_flops() == model_flops(model, 3, 19, retention)
    assert out.kept_indices.shape == (3, 2) and (out.kept_indices[:, 0] == 0).all()


def test_roberta_multiple_choice():
    torch.manual_seed(0)
    model = RobertaForMultipleChoice(RobertaConfig(**SMALL)).eval()
    inputs = {k: v[None].repeat(2, 1, 1) for k, v in batch_for(model.config, "right").items()}
    patched = apply_power_bert(copy.deepcopy(model), [19, 19, 19])
    with torch.no_grad():
        torch.testing.assert_close(patched(**inputs).logits, model(**inputs).logits, atol=1e-5, rtol=0)


# ALBERT (two layer groups over four applications), DistilBERT, ModernBERT (local and global layers, a
# window narrow enough to matter at these lengths), CamemBERT: tiny random configurations.
def albert(implementation="eager"):
    config = AlbertConfig(
        **{**SMALL, "num_hidden_layers": 4, "vocab_size": 100},
        embedding_size=32,
        num_hidden_groups=2,
        num_labels=3,
        attn_implementation=implementation,
    )
    return AlbertForSequenceClassification(config)


def distilbert(implementation="eager"):
    config = DistilBertConfig(
        vocab_size=100,
        dim=64,
        n_layers=3,
        n_heads=4,
        hidden_dim=128,
        max_position_embeddings=64,
        num_labels=2,
        attn_implementation=implementation,
    )
    return DistilBertForSequenceClassification(config)


def modernbert_config(implementation="eager", pooling="cls", **extra):
    return ModernBertConfig(
        vocab_size=100,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=96,
        max_position_embeddings=64,
        local_attention=6,  # a query sees 3 original positions either side in layers 1 and 3
        global_attn_every_n_layers=2,
        classifier_pooling=pooling,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        cls_token_id=1,
        sep_token_id=2,
        num_labels=2,
        attn_implementation=implementation,
        **extra,
    )


def modernbert(implementation="eager"):
    return ModernBertForSequenceClassification(modernbert_config(implementation))


def modernbert_mean(implementation="eager"):
    return ModernBertForSequenceClassification(modernbert_config(implementation, "mean"))


def camembert(implementation="eager"):
    config = CamembertConfig(**SMALL, vocab_size=100, attn_implementation=implementation)
    return CamembertForSequenceClassification(config)


def data2vec_text(implementation="eager"):
    config = Data2VecTextConfig(**SMALL, vocab_size=100, attn_implementation=implementation)
    return Data2VecTextForSequenceClassification(config)


NEW = [albert, distilbert, modernbert, modernbert_mean, camembert, data2vec_text]
PRUNED = {albert: [14, 9, 5, 2], distilbert: [12, 6, 2], modernbert: [14, 9, 5, 2], modernbert_mean: [14, 9, 5, 2]}
PRUNED[camembert] = PRUNED[data2vec_text] = [12, 6, 2]


def new_batch(config, side: str, B: int = 3, N: int = 19):
    inputs = batch_for(config, side, B, N)
    inputs["input_ids"] = inputs["input_ids"] % config.vocab_size
    return inputs


@pytest.mark.parametrize("make", NEW)
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_new_architectures_full_retention_equal_stock(make, implementation, side):
    torch.manual_seed(0)
    model = make(implementation).eval()
    layers = len(PRUNED[make])
    patched = apply_power_bert(copy.deepcopy(model), [1.0] * layers)
    for inputs in (new_batch(model.config, side), new_batch(model.config, side, B=1)):
        with torch.no_grad():
            want, got = model(**inputs), patched(**inputs)
        assert (got.logits - want.logits).abs().max() <= 1e-5


@pytest.mark.parametrize("make", NEW)
def test_new_architectures_rows_are_independent_when_pruned(make):
    torch.manual_seed(0)
    model = apply_power_bert(make().eval(), PRUNED[make])
    inputs = new_batch(model.config, "right")
    lengths = inputs["attention_mask"].sum(dim=1).tolist()
    with torch.no_grad():
        together = model(**inputs)
        for b, n in enumerate(lengths):
            alone = model(**{k: v[b : b + 1, :n] for k, v in inputs.items()})
            torch.testing.assert_close(alone.logits[0], together.logits[b], atol=1e-5, rtol=1e-5)
            kept = together.kept_indices[b][: alone.kept_indices.shape[1]]
            assert torch.equal(alone.kept_indices[0], kept)


@pytest.mark.parametrize("make", NEW)
def test_new_architectures_flops_match_flop_counter(make):
    torch.manual_seed(0)
    model = make().eval()
    inputs = new_batch(model.config, "right")
    retention = PRUNED[make]
    with torch.no_grad(), FlopCounterMode(display=False) as stock:
        model(**inputs)
    assert stock.get_total_flops() == model_flops(model, 3, 19)
    apply_power_bert(model, retention)
    with torch.no_grad(), FlopCounterMode(display=False) as pruned:
        out = model(**inputs)
    assert pruned.get_total_flops() == model_flops(model, 3, 19, retention)
    assert len(out.kept_indices[0]) == retention[-1]
    assert model_flops(model, 3, 19, retention) < model_flops(model, 3, 19)


def test_albert_shares_its_layers_with_one_extract_per_application():
    torch.manual_seed(0)
    model = apply_power_bert(albert().eval(), PRUNED[albert])
    base = model.albert
    assert len(base.power_extract) == 4 and len(base.encoder.albert_layer_groups) == 2
    with torch.no_grad():
        out = model.albert(**new_batch(model.config, "right"))
    assert [p.shape[1] for p in out.layer_kept_indices] == PRUNED[albert]
    # The embedding projection runs on every input vector: it counts in the FLOPs of any configuration.
    stock_extra = 2 * 3 * 19 * 32 * 64
    assert model_flops(model, 3, 19, [1, 1, 1, 1]) > stock_extra


def _masked_modernbert(base, inputs, layer_kept, position_ids):
    # The stock ModernBERT layers on all N vectors, where every vector a patched layer removed is instead
    # masked out of the keys of the later layers: rotary angles and windows use the original positions
    # by construction. Kept vectors must come out as the patched model's.
    ids, real = inputs["input_ids"], inputs["attention_mask"].bool()
    B, N = ids.shape
    hidden = base.embeddings(input_ids=ids)
    index = torch.arange(N)
    near = (index[:, None] - index[None, :]).abs() <= base.config.sliding_window
    alive = real
    for layer, kept in zip(base.layers, layer_kept, strict=True):
        allowed = alive[:, None, :].expand(B, N, N)
        if layer.attention_type == "sliding_attention":
            allowed = allowed & near
        bias = torch.zeros(B, 1, N, N).masked_fill(~allowed[:, None], torch.finfo(torch.float32).min)
        cos_sin = base.rotary_emb(hidden, position_ids, layer.attention_type)
        hidden = layer(hidden, attention_mask=bias, position_embeddings=cos_sin)
        alive = torch.zeros_like(real).scatter(1, kept, True) & real
    return base.final_norm(hidden)


@pytest.mark.parametrize("offset", [0, 5])
def test_modernbert_rotary_and_windows_follow_original_positions(offset):
    torch.manual_seed(0)
    model = ModernBertModel(modernbert_config()).eval()
    inputs = new_batch(model.config, "right")
    position_ids = torch.arange(19)[None] + offset
    retention = [13, 9, 6, 3]
    stock = copy.deepcopy(model)
    apply_power_bert(model, retention)
    with torch.no_grad():
        out = model(**inputs, position_ids=position_ids)
        want = _masked_modernbert(stock, inputs, out.layer_kept_indices, position_ids)
    assert [p.shape[1] for p in out.layer_kept_indices] == retention
    want = want.gather(1, out.kept_indices[:, :, None].expand(-1, -1, 64))
    real = out.kept_attention_mask
    torch.testing.assert_close(out.last_hidden_state[real], want[real], atol=1e-5, rtol=1e-5)
    # The kept vectors are not neighbours any more: a window over tensor slots would differ.
    gaps = out.layer_kept_indices[1].diff(dim=1)
    assert (gaps > 1).any()


def test_modernbert_mean_pooling_averages_the_surviving_real_tokens():
    torch.manual_seed(0)
    model = apply_power_bert(modernbert_mean().eval(), PRUNED[modernbert_mean])
    inputs = new_batch(model.config, "right")
    with torch.no_grad():
        logits = model(**inputs).logits
        out = model.model(**inputs)
        weights = out.kept_attention_mask.float()[:, :, None]
        pooled = (out.last_hidden_state * weights).sum(1) / weights.sum(1)
        torch.testing.assert_close(logits, model.classifier(model.head(pooled)), atol=1e-6, rtol=1e-6)
    remove_power_bert(model)
    assert "forward" not in vars(model)


def test_modernbert_local_layers_train():
    torch.manual_seed(0)
    model = apply_power_bert(modernbert().train(), PRUNED[modernbert])
    inputs = new_batch(model.config, "right")
    loss = model(**inputs, labels=torch.tensor([0, 1, 0])).loss
    loss.backward()
    local = model.model.layers[1]
    assert local.attention_type == "sliding_attention" and local.attn.Wqkv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "head",
    [
        AlbertForMaskedLM,
        AlbertForTokenClassification,
        AlbertForQuestionAnswering,
        AlbertForPreTraining,
        DistilBertForMaskedLM,
        DistilBertForTokenClassification,
        DistilBertForQuestionAnswering,
        ModernBertForMaskedLM,
        ModernBertForTokenClassification,
        ModernBertForQuestionAnswering,
        ModernBertForMultipleChoice,
        CamembertForMaskedLM,
    ],
)
def test_new_architectures_refuse_heads_that_read_every_vector(head):
    if head.__name__.startswith("Albert"):
        config = albert().config
    elif head.__name__.startswith("Distil"):
        config = distilbert().config
    elif head.__name__.startswith("Camembert"):
        config = camembert().config
    else:
        config = modernbert_config()
    with pytest.raises(TypeError, match=f"{head.__name__} is not supported"):
        apply_power_bert(head(config), [1.0] * config.num_hidden_layers)


def test_new_architectures_refuse_what_they_cannot_reproduce():
    config = albert().config
    config.inner_group_num = 2
    with pytest.raises(ValueError, match="inner_group_num=2"):
        apply_power_bert(AlbertModel(config), [1.0] * 4)
    model = ModernBertModel(modernbert_config())
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="attn_implementation='flash_attention_2'"):
        apply_power_bert(model, [1.0] * 4)


_TINY = {
    "hidden_size": 64,
    "dim": 64,
    "num_attention_heads": 4,
    "n_heads": 4,
    "intermediate_size": 96,
    "hidden_dim": 96,
    "embedding_size": 32,
    "local_attention": 6,
}


@pytest.mark.parametrize("name", ["albert-base", "distilbert", "modernbert-base"])
def test_bench_runs_the_new_configurations(name, monkeypatch, capsys):
    # The real sizes at tiny widths (same model type and depth), so the command runs in moments.
    model_type, sizes = CONFIGS[name]
    monkeypatch.setitem(CONFIGS, name, (model_type, {k: _TINY.get(k, v) for k, v in sizes.items()}))
    argv = ["bench", "--config", name, "--batch", "2", "--seq-len", "16", "--repeats", "1", "--warmup", "0"]
    assert main([*argv, "--no-memory", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["model"] == name and report["flop_ratio"] > 1
    assert len(report["kept_per_layer"]) == sizes.get("num_hidden_layers", sizes.get("n_layers"))


@pytest.mark.parametrize("make", [distilbert, modernbert_mean])
def test_eval_and_predict_commands_run_the_new_architectures(make, minilm_tokenizer, tmp_path, capsys):
    # A saved random classifier with its configuration in config.json, a real BERT tokenizer (its token
    # type ids are ignored by these models, patched or not), a few labelled sentences.
    torch.manual_seed(0)
    model = make()
    model.resize_token_embeddings(minilm_tokenizer.vocab_size)
    apply_power_bert(model, [6, 4, 2, 1] if make is modernbert_mean else [6, 3, 1])
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    minilm_tokenizer.save_pretrained(folder)
    rows = ["good film\t1", "a dull and tired plot\t0", "great acting all round\t1", "bad\t0"]
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    argv = ["eval", "--model", str(folder), "--eval-file", str(tmp_path / "dev.tsv"), "--max-length", "12"]
    assert main([*argv, "--no-speed", "--output", str(tmp_path / "out.json")]) == 0
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["num_eval"] == 4 and result["flop_ratio"] > 1
    # predict pads the sentences into one batch: each must get what it gets alone.
    sentences = [row.split("\t")[0] for row in rows]
    (tmp_path / "in.tsv").write_text("sentence\n" + "\n".join(sentences) + "\n")
    argv = ["predict", "--model", str(folder), "--input", str(tmp_path / "in.tsv"), "--max-length", "12"]
    assert main([*argv, "--output", str(tmp_path / "out.jsonl")]) == 0
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    model.eval()
    for sentence, record in zip(sentences, records, strict=True):
        with torch.no_grad():
            alone = model(**minilm_tokenizer([sentence], return_tensors="pt")).logits.softmax(dim=-1)[0]
        torch.testing.assert_close(torch.tensor(list(record["probabilities"].values())), alone, atol=1e-5, rtol=0)
