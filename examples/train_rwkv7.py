"""Train a tiny RWKV-7 ("x070") on a toy text, then answer from the cached state. Runs in seconds on a CPU.

    python examples/train_rwkv7.py [--steps 150] [--save DIR]

What it shows: an ``RWKV7`` built from its config (the official training code's initialisation), the
optimiser groups the official trainer uses (weight decay only on the large matrices, twice the learning rate
for the decay offset ``att.w0``), next-token training with ``labels=``, greedy generation through the shared
decoding loop, and saving the result as a directory any ``RWKV7.from_pretrained`` reads.
"""

from __future__ import annotations

import argparse
import time

import torch

from rwkv_vision import RWKV7, WorldTokenizer
from rwkv_vision.generation import CHAT_STOP_TOKENS
from rwkv_vision.models import RWKV7Config

TEXT = (
    "User: What colour is the sky?\n\nAssistant: The sky is blue.\n\n"
    "User: What colour is grass?\n\nAssistant: Grass is green.\n\n"
    "User: What colour is snow?\n\nAssistant: Snow is white.\n\n"
    "User: What colour is the sun?\n\nAssistant: The sun is yellow.\n\n"
)


def param_groups(model: RWKV7, lr: float, weight_decay: float) -> list[dict]:
    """The official x070 trainer's groups: w0 at 2x lr; decay only on 2-D ``.weight`` matrices."""
    decay, double_lr, plain = [], [], []
    for name, p in model.named_parameters():
        if name.endswith("att.w0"):
            double_lr.append(p)
        elif p.squeeze().dim() >= 2 and name.endswith(".weight"):
            decay.append(p)
        else:
            plain.append(p)
    return [
        {"params": plain, "weight_decay": 0.0, "lr": lr},
        {"params": double_lr, "weight_decay": 0.0, "lr": 2 * lr},
        {"params": decay, "weight_decay": weight_decay, "lr": lr},
    ]


def main(steps: int = 150, seed: int = 0, save: str | None = None, verbose: bool = True) -> dict:
    torch.manual_seed(seed)
    torch.set_num_threads(1)  # a model this small gains nothing from more threads, only synchronisation
    tokenizer = WorldTokenizer()
    world_ids = tokenizer.encode(TEXT)
    # The toy text uses a few dozen of the 65536 World tokens; a model over just those trains in seconds.
    vocab = sorted(set(world_ids))
    to_small = {world: small for small, world in enumerate(vocab)}
    data = torch.tensor([to_small[i] for i in world_ids])  # [t]

    config = RWKV7Config(n_layer=2, n_embd=64, head_size=32, d_w=16, d_a=16, d_v=8, d_g=16, vocab_size=len(vocab))
    model = RWKV7(config)
    optimizer = torch.optim.AdamW(param_groups(model, lr=3e-3, weight_decay=0.01), betas=(0.9, 0.99))

    window, batch = 24, 8
    losses = []
    start = time.time()
    for step in range(steps):
        offsets = torch.randint(0, len(data) - window, (batch,))
        chunk = torch.stack([data[o : o + window] for o in offsets.tolist()])  # [b, window]
        loss = model(chunk, labels=chunk).loss  # labels are shifted inside: position i predicts i + 1
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if verbose and (step % 25 == 0 or step == steps - 1):
            print(f"step {step:4d}  loss {loss.item():.3f}  ({time.time() - start:.1f}s)")

    model.eval()
    prompt = "User: What colour is grass?\n\nAssistant:"
    if verbose:
        print(prompt, end="", flush=True)
    out = model.generate(
        [to_small[i] for i in tokenizer.encode(prompt)],
        max_new_tokens=16,
        stop_tokens=[to_small[i] for i in CHAT_STOP_TOKENS if i in to_small],  # "\n\n" ends the answer
        streamer=(lambda row, token: print(tokenizer.decode([vocab[token]]), end="", flush=True)) if verbose else None,
    )
    answer = tokenizer.decode([vocab[i] for i in out.tokens[0]]).strip()
    if verbose:
        print(f"[{out.finish_reasons[0]}]")
    if save:
        model.save_pretrained(save)  # config.json ("architecture": "rwkv7") + model.safetensors
        if verbose:
            print(f"saved to {save}")
    return {"losses": losses, "answer": answer, "model": model}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", default=None, help="a directory to save the trained model to")
    args = parser.parse_args()
    main(steps=args.steps, seed=args.seed, save=args.save)
