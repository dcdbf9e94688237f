"""Worker for test_retrieval_distributed.py, run by torchrun with 2 CPU processes (gloo).

Every process builds the same tiny CLIP, takes its half of one fixed global batch, and computes the
trainer's loss (embeddings gathered from all processes) and gradients through accelerate's DDP wrapper.
Rank 0 writes the loss and the gradients to OUT/ddp.pt.
"""

import sys

import torch


def global_batch(b: int = 8, vocab: int = 50, length: int = 7, size: int = 32):
    g = torch.Generator().manual_seed(123)
    px = torch.randn(b, 3, size, size, generator=g)
    ids = torch.randint(5, vocab, (b, length), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP] (the pooled eos token)
    return px, ids, torch.ones_like(ids)


def build_model():
    import transformers

    from vlens.models.presets import test_clip
    from vlens.retrieval.train import Towers

    torch.manual_seed(0)
    return Towers.build(transformers.CLIPModel(test_clip(vocab_size=50)))


def main(out: str) -> None:
    from vlens.retrieval.loss import contrastive_loss, info_nce
    from vlens.training import make_accelerator

    acc = make_accelerator(1, "no", cpu=True)
    model = acc.prepare(build_model())
    px, ids, mask = global_batch()
    b = len(px) // acc.num_processes
    sl = slice(acc.process_index * b, (acc.process_index + 1) * b)
    img, txt, scale = model(px[sl], ids[sl], mask[sl])
    loss = contrastive_loss(img, txt, scale)
    acc.backward(loss)
    if acc.is_main_process:
        grads = {n: p.grad.clone() for n, p in acc.unwrap_model(model).named_parameters() if p.grad is not None}
        local = info_nce(img, txt, scale).detach()  # this process's half alone, for contrast
        torch.save({"loss": loss.detach(), "local_loss": local, "world": acc.num_processes, "grads": grads},
                   f"{out}/ddp.pt")
    acc.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])
