import pytest
import torch

from rwkv_vision import GenerationConfig, create_model, generate
from rwkv_vision.generation import TextStreamer, sample_next_token

from reference.fixtures import one_cpu_thread  # noqa: F401


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = create_model("rwkv6-test-tiny", vocab_size=32)
    with torch.no_grad():
        model.head.weight.mul_(20)  # sharper logits: greedy paths that differ between prompts
    return model


PROMPT = [3, 14, 15, 9, 2, 6]


def _greedy_by_rerunning(model, prompt, n):
    ids = list(prompt)
    for _ in range(n):
        logits, _ = model(input_ids=torch.tensor([ids]))
        ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt) :]


def test_greedy_equals_argmax_of_full_reruns(model):
    out = generate(model, PROMPT, max_new_tokens=10)
    assert out.tokens == [_greedy_by_rerunning(model, PROMPT, 10)]
    assert out.finish_reasons == ["length"]


def test_stop_token_is_kept_then_generation_stops(model):
    free = generate(model, PROMPT, max_new_tokens=10).tokens[0]
    stop = free[3]
    first = free.index(stop)
    out = generate(model, PROMPT, max_new_tokens=10, stop_tokens=(stop,))
    assert out.tokens == [free[: first + 1]]
    assert out.finish_reasons == ["stop"]


def test_returned_state_continues_the_sequence(model):
    out = generate(model, PROMPT, max_new_tokens=5)
    # The state has read the prompt and all generated tokens but the last.
    logits, _ = model(input_ids=torch.tensor([out.tokens[0][-1:]]), state=out.state)
    full, _ = model(input_ids=torch.tensor([PROMPT + out.tokens[0]]))
    torch.testing.assert_close(logits[0, -1], full[0, -1], rtol=1e-4, atol=1e-4)


def test_top_k_1_sampling_equals_greedy(model):
    greedy = generate(model, PROMPT, max_new_tokens=8).tokens
    sampled = generate(model, PROMPT, max_new_tokens=8, do_sample=True, top_k=1, temperature=0.7)
    assert sampled.tokens == greedy


def test_tiny_top_p_equals_greedy_and_sampling_is_reproducible(model):
    greedy = generate(model, PROMPT, max_new_tokens=8).tokens
    assert generate(model, PROMPT, max_new_tokens=8, do_sample=True, top_p=1e-6).tokens == greedy
    config = GenerationConfig(max_new_tokens=8, do_sample=True, temperature=2.0)
    a = generate(model, PROMPT, config, generator=torch.Generator().manual_seed(1)).tokens
    b = generate(model, PROMPT, config, generator=torch.Generator().manual_seed(1)).tokens
    assert a == b


def test_sampling_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    config = GenerationConfig(do_sample=True, top_k=2)
    picks = {int(sample_next_token(logits, config)) for _ in range(50)}
    assert picks <= {2, 3}
    config = GenerationConfig(do_sample=True, top_p=0.7)  # p = .03 .09 .24 .64: keeps 3 and 2
    picks = {int(sample_next_token(logits, config)) for _ in range(50)}
    assert picks <= {2, 3}


def test_streamer_gets_every_token_in_order(model):
    seen = []
    out = generate(model, PROMPT, max_new_tokens=6, streamer=lambda row, token: seen.append((row, token)))
    assert seen == [(0, t) for t in out.tokens[0]]


def test_batch_with_ragged_stopping_matches_single_rows(model):
    prompts = [PROMPT, [7, 7, 1, 30, 5, 11]]
    singles = [generate(model, p, max_new_tokens=8).tokens[0] for p in prompts]
    assert singles[0] != singles[1]
    stop = singles[0][2]  # row 0 stops early, row 1 (probably) runs on
    expected = [s[: s.index(stop) + 1] if stop in s else s for s in singles]
    out = generate(model, torch.tensor(prompts), max_new_tokens=8, stop_tokens=[stop])
    assert out.tokens == expected
    assert out.finish_reasons == ["stop" if stop in s else "length" for s in singles]
    # a stopped row's state is frozen where it stopped
    _, row0 = model(input_ids=torch.tensor([PROMPT + expected[0][:-1]]))
    torch.testing.assert_close(out.state.select(0)[1].wkv, row0[1].wkv, rtol=1e-4, atol=1e-5)


def test_prompts_of_different_lengths(model):
    prompts = [PROMPT, [4, 8]]
    out = generate(model, prompts, max_new_tokens=5)
    assert out.tokens == [generate(model, p, max_new_tokens=5).tokens[0] for p in prompts]


def test_decode_from_a_prefill_done_elsewhere(model):
    logits, state = model(input_ids=torch.tensor([PROMPT]), chunk_size=2)
    out = generate(model, state=state, next_logits=logits[:, -1], max_new_tokens=6)
    assert out.tokens == generate(model, PROMPT, max_new_tokens=6, prefill_chunk_size=4).tokens


def test_works_with_any_model_following_the_protocol():
    class Counter:  # next token = last token + 1; the "state" is the last token
        def __call__(self, input_ids, state=None):
            last = input_ids[:, -1]
            logits = torch.nn.functional.one_hot((last + 1) % 10, 10).float()[:, None]
            return logits.repeat(1, input_ids.shape[1], 1), last

    out = generate(Counter(), [[1, 2], [5, 6]], max_new_tokens=5, stop_tokens=[9])
    assert out.tokens == [[3, 4, 5, 6, 7], [7, 8, 9]]


def test_text_streamer_holds_back_split_characters():
    class Bytes:  # a tokenizer whose ids are single UTF-8 bytes
        def decode_bytes(self, ids):
            return bytes(ids)

        def stream_decoder(self):
            import codecs

            tokenizer, inc = self, codecs.getincrementaldecoder("utf-8")()

            class D:
                def decode(self, ids):
                    return inc.decode(tokenizer.decode_bytes(ids))

            return D()

    pieces = []
    streamer = TextStreamer(Bytes(), on_text=lambda row, text: pieces.append(text))
    for b in "a😀".encode():
        streamer(0, b)
    assert pieces == ["a", "😀"] and streamer.texts[0] == "a😀"


def test_bad_arguments():
    with pytest.raises(ValueError, match="top_p"):
        GenerationConfig(top_p=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationConfig(max_new_tokens=-1)
    with pytest.raises(ValueError, match="next_logits"):
        generate(lambda **kw: None)
