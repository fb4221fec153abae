"""Train a tiny RWKV-6 on a toy text, then chat with it from the cached state. Runs in seconds on a CPU.

    python examples/text_lm.py [--steps 150]

What it shows: building an ``RWKV6`` by keyword arguments, training it on next-token prediction with the
World tokenizer, and generating greedily: the prompt is read once, then each new token costs one step of
the recurrence from the cached ``RWKVState`` (no growing KV cache).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from rwkv_vision import RWKV6, WorldTokenizer, generate
from rwkv_vision.generation import CHAT_STOP_TOKENS

TEXT = (
    "User: What colour is the sky?\n\nAssistant: The sky is blue.\n\n"
    "User: What colour is grass?\n\nAssistant: Grass is green.\n\n"
    "User: What colour is snow?\n\nAssistant: Snow is white.\n\n"
    "User: What colour is the sun?\n\nAssistant: The sun is yellow.\n\n"
)


def main(steps: int = 150, seed: int = 0, verbose: bool = True) -> dict:
    torch.manual_seed(seed)
    torch.set_num_threads(1)  # a model this small gains nothing from more threads, only synchronisation
    tokenizer = WorldTokenizer()
    world_ids = tokenizer.encode(TEXT)

    # The toy text uses a few dozen of the 65536 World tokens; a model over just those trains in seconds
    # (a real model keeps vocab_size=65536 and needs no mapping).
    vocab = sorted(set(world_ids))
    to_small = {world: small for small, world in enumerate(vocab)}
    data = torch.tensor([to_small[i] for i in world_ids])  # [t]

    model = RWKV6(n_layer=2, n_embd=64, head_size=32, d_mix=8, d_decay=16, vocab_size=len(vocab))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)

    # Next-token prediction on random windows of the text: x = window[:-1], target = window[1:].
    window, batch = 24, 8
    losses = []
    start = time.time()
    for step in range(steps):
        offsets = torch.randint(0, len(data) - window, (batch,))
        chunk = torch.stack([data[o : o + window + 1] for o in offsets.tolist()])  # [b, window + 1]
        logits, _ = model(input_ids=chunk[:, :-1])  # [b, window, vocab]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if verbose and (step % 25 == 0 or step == steps - 1):
            print(f"step {step:4d}  loss {loss.item():.3f}  ({time.time() - start:.1f}s)")

    prompt = "User: What colour is grass?\n\nAssistant:"
    if verbose:
        print(prompt, end="", flush=True)
    out = generate(
        model,
        [to_small[i] for i in tokenizer.encode(prompt)],
        max_new_tokens=16,
        stop_tokens=[to_small[i] for i in CHAT_STOP_TOKENS if i in to_small],  # "\n\n" ends the answer
        streamer=(lambda row, token: print(tokenizer.decode([vocab[token]]), end="", flush=True)) if verbose else None,
    )
    answer = tokenizer.decode([vocab[i] for i in out.tokens[0]]).strip()
    if verbose:
        print(f"[{out.finish_reasons[0]}]")
    return {"losses": losses, "answer": answer}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(steps=args.steps, seed=args.seed)
