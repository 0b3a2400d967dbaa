"""The single-device GPT: shapes, causality, weight tying, its cut points, generation."""
import pytest
import torch

from bigtrain.zoo.gpt import GPT, GPTConfig, gpt_loss


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.tiny(**kw))


def test_config_rejects_widths_the_heads_cannot_split():
    with pytest.raises(ValueError, match="n_embd=30 is not divisible by n_head=4"):
        GPTConfig.tiny(n_embd=30)
    with pytest.raises(ValueError, match="dropout must be in"):
        GPTConfig.tiny(dropout=1.0)
    with pytest.raises(ValueError, match="n_layer must be >= 1"):
        GPTConfig.tiny(n_layer=0)


def test_logits_shape_and_tied_head():
    model = tiny()
    idx = torch.randint(0, 64, (3, 16))
    assert model(idx).shape == (3, 16, 64)
    assert model.head.lm_head.weight is model.embed.wte.weight
    # the pipeline's cut points compose to the model
    x = model.embed(idx)
    for block in model.blocks:
        x = block(x)
    assert torch.equal(model.head(x), model(idx))


def test_attention_is_causal():
    model = tiny().eval()
    a = torch.randint(0, 64, (1, 16))
    b = a.clone()
    b[0, 10:] = (b[0, 10:] + 1) % 64  # change only the future after position 9
    assert torch.allclose(model(a)[0, :10], model(b)[0, :10], atol=1e-6)
    assert not torch.allclose(model(a)[0, 10:], model(b)[0, 10:])


def test_too_long_input_names_block_size():
    with pytest.raises(ValueError, match="exceeds block_size=16"):
        tiny()(torch.zeros(1, 17, dtype=torch.long))


def test_a_few_steps_fit_one_batch():
    model = tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    idx = torch.randint(0, 64, (4, 16))
    first = None
    for _ in range(30):
        loss = gpt_loss(model(idx[:, :-1]), idx[:, 1:])
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first == pytest.approx(torch.log(torch.tensor(64.0)).item(), abs=0.3)  # ~uniform
    assert loss.item() < first - 1.0


def test_weighted_loss_matches_mean_for_equal_weights():
    logits, y = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    assert torch.allclose(gpt_loss(logits, y, torch.ones(2)), gpt_loss(logits, y))
    only_first = gpt_loss(logits, y, torch.tensor([1.0, 0.0]))
    assert torch.allclose(only_first, gpt_loss(logits[:1], y[:1]))


def test_generate_appends_tokens_within_the_vocabulary():
    model = tiny()
    torch.manual_seed(1)
    out = model.generate(torch.zeros(2, 3, dtype=torch.long), max_new_tokens=20, top_k=5)
    assert out.shape == (2, 23) and out.min() >= 0 and out.max() < 64
    torch.manual_seed(1)
    again = model.generate(torch.zeros(2, 3, dtype=torch.long), max_new_tokens=20, top_k=5)
    assert torch.equal(out, again)
    greedy = model.generate(torch.zeros(1, 3, dtype=torch.long), 4, temperature=1e-4)
    assert greedy[0, 3] == model(torch.zeros(1, 3, dtype=torch.long))[0, -1].argmax()
    with pytest.raises(ValueError, match="temperature must be > 0"):
        model.generate(out, 1, temperature=0)


def test_gpt2_preset_has_124m_parameters():
    with torch.device("meta"):
        model = GPT(GPTConfig.gpt2())
    assert 123e6 < model.num_params(non_embedding=False) < 125e6
