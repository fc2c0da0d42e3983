"""A patched SentenceTransformer (the real all-MiniLM-L6-v2: BERT, mean pooling, Normalize)."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F

from powerbert_kernels import apply_power_bert, from_pretrained, is_patched, model_flops, remove_power_bert

st = pytest.importorskip("sentence_transformers")

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the quiet river bank.",
    "Short one.",
    "Attention is computed on all vectors a layer receives, the feed-forward block only on kept ones.",
    "Hi",
    "A much longer sentence, with commas, clauses and enough words that it is padded the least of all of them.",
]
RETENTION = [0.8, 0.6, 0.5, 0.4, 0.3, 0.2]


@pytest.fixture(scope="module")
def stock(minilm_path):
    return st.SentenceTransformer(minilm_path, device="cpu").eval()


def encode(model, sentences=SENTENCES, **kwargs):
    return model.encode(sentences, convert_to_tensor=True, batch_size=len(sentences), **kwargs)


def test_full_retention_equals_stock(stock):
    patched = apply_power_bert(copy.deepcopy(stock), [1.0] * 6)
    assert is_patched(patched) and not is_patched(stock)
    assert (encode(patched) - encode(stock)).abs().max() <= 1e-6


def test_pruned_embedding_is_the_mean_of_the_kept_real_vectors(stock):
    patched = apply_power_bert(copy.deepcopy(stock), RETENTION)
    got = encode(patched)
    # The same encoder patched on its own: its last_hidden_state averaged over kept_attention_mask.
    encoder = patched[0].auto_model
    batch = patched.preprocess(SENTENCES)
    with torch.no_grad():
        out = encoder(**batch)
    weights = out.kept_attention_mask.float()[:, :, None]
    want = F.normalize((out.last_hidden_state * weights).sum(dim=1) / weights.sum(dim=1), dim=-1)
    assert (got - want).abs().max() <= 1e-6
    assert ((got * encode(stock)).sum(dim=-1) < 1 - 1e-4).any(), "nothing was pruned"
    tokens = encode(patched, output_value="token_embeddings")
    assert [t.shape[0] for t in tokens] == out.kept_attention_mask.sum(dim=1).tolist()


def test_embedding_does_not_depend_on_the_batch(stock):
    patched = apply_power_bert(copy.deepcopy(stock), RETENTION)
    together = encode(patched)
    for i, sentence in enumerate(SENTENCES):
        alone = encode(patched, [sentence])
        assert (alone[0] - together[i]).abs().max() <= 1e-6


def test_cls_pooling_reads_the_cls_vector(minilm_path):
    transformer = st.models.Transformer(minilm_path)
    pooling = st.models.Pooling(transformer.get_embedding_dimension(), pooling_mode="cls")
    model = apply_power_bert(st.SentenceTransformer(modules=[transformer, pooling], device="cpu").eval(), RETENTION)
    got = encode(model)
    with torch.no_grad():
        out = transformer.auto_model(**model.preprocess(SENTENCES))
    assert torch.equal(out.kept_indices[:, 0], torch.zeros(len(SENTENCES), dtype=torch.long))
    assert (got - out.last_hidden_state[:, 0]).abs().max() <= 1e-6


@pytest.mark.parametrize("mode", ["max", "weightedmean", "lasttoken", ("cls", "max")])
def test_other_pooling_modes_are_refused(minilm_path, mode):
    transformer = st.models.Transformer(minilm_path)
    pooling = st.models.Pooling(transformer.get_embedding_dimension(), pooling_mode=mode)
    model = st.SentenceTransformer(modules=[transformer, pooling], device="cpu")
    with pytest.raises(ValueError, match="pooling mode .* cannot follow a PoWER-BERT encoder .*; supported: cls, mean"):
        apply_power_bert(model, RETENTION)
    assert not is_patched(model)


def test_prompt_exclusion_is_refused(minilm_path):
    transformer = st.models.Transformer(minilm_path)
    pooling = st.models.Pooling(transformer.get_embedding_dimension(), include_prompt=False)
    model = st.SentenceTransformer(modules=[transformer, pooling], device="cpu")
    with pytest.raises(ValueError, match="include_prompt=False"):
        apply_power_bert(model, RETENTION)


def test_remove_restores_the_stock_encoder(stock):
    patched = apply_power_bert(copy.deepcopy(stock), RETENTION)
    remove_power_bert(patched)
    assert not is_patched(patched) and "forward" not in vars(patched[0])
    assert torch.equal(encode(patched), encode(stock))


def test_save_load_pickle_and_flops(stock, tmp_path):
    patched = apply_power_bert(copy.deepcopy(stock), RETENTION)
    want = encode(patched)
    patched.save(str(tmp_path))
    loaded = from_pretrained(tmp_path, auto_class=st.SentenceTransformer, device="cpu")
    assert is_patched(loaded) and (encode(loaded) - want).abs().max() <= 1e-6
    copied = pickle.loads(pickle.dumps(patched))
    assert torch.equal(encode(copied), want)
    assert model_flops(patched, 2, 20, RETENTION) < model_flops(patched, 2, 20)
