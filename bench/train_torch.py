"""PyTorch anchor for `odin train`'s speed: the same RWKV-6 architecture, config, batch,
sequence length and thread count, trained on the CPU with AdamW and global-norm clipping.

Usage (PyTorch lives in a virtual environment outside the test path):
    python3 -m venv .venv-bench && .venv-bench/bin/pip install torch numpy
    .venv-bench/bin/python bench/train_torch.py --config configs/odin-tiny.json \
        --rows 16 --seq-len 256 --threads 2 --steps 12 --warmup 2

Prints one JSON line: median seconds per optimizer step and tokens/s (rows * seq_len / step).
The WKV6 recurrence is written the way PyTorch CPU trainers write it without a custom
kernel: a loop over time with batched outer products, differentiated by autograd.
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def wkv6_loop(r, k, v, w, u):
    """r, k, v, w: [B, T, H, N]; u: [H, N]. Returns y [B, T, H, N]."""
    b, t, h, n = r.shape
    s = torch.zeros(b, h, n, n, dtype=r.dtype)
    ys = []
    for i in range(t):
        kv = k[:, i, :, :, None] * v[:, i, :, None, :]
        ys.append((r[:, i, :, None, :] @ (s + u[None, :, :, None] * kv)).squeeze(2))
        s = s * w[:, i, :, :, None] + kv
    return torch.stack(ys, 1)


class TimeMix(nn.Module):
    def __init__(self, c, h, n, mix_lora, decay_lora, gn_eps):
        super().__init__()
        self.h, self.n, self.gn_eps, self.mix_lora = h, n, gn_eps, mix_lora
        self.maa_x = nn.Parameter(torch.rand(c) * 0.5)
        self.maa = nn.Parameter(torch.rand(5, c) * 0.5)
        self.maa_w1 = nn.Parameter(torch.randn(c, 5 * mix_lora) * 1e-2)
        self.maa_w2 = nn.Parameter(torch.randn(5, mix_lora, c) * 1e-2)
        self.decay = nn.Parameter(torch.full((c,), -1.0))
        self.decay_w1 = nn.Parameter(torch.randn(c, decay_lora) * 1e-2)
        self.decay_w2 = nn.Parameter(torch.randn(decay_lora, c) * 1e-2)
        self.faaaa = nn.Parameter(torch.randn(h, n) * 0.1)
        self.r = nn.Linear(c, c, bias=False)
        self.k = nn.Linear(c, c, bias=False)
        self.v = nn.Linear(c, c, bias=False)
        self.g = nn.Linear(c, c, bias=False)
        self.o = nn.Linear(c, c, bias=False)
        self.ln_x = nn.GroupNorm(h, c, eps=gn_eps)

    def forward(self, x):
        b, t, c = x.shape
        xx = F.pad(x, (0, 0, 1, -1)) - x
        xxx = x + xx * self.maa_x
        m = torch.tanh(xxx.view(b * t, c) @ self.maa_w1).view(b * t, 5, -1).transpose(0, 1)
        m = torch.bmm(m, self.maa_w2).view(5, b, t, c)
        xw, xk, xv, xr, xg = (x + xx * (self.maa[i] + m[i]) for i in range(5))
        r, k, v = self.r(xr), self.k(xk), self.v(xv)
        g = F.silu(self.g(xg))
        w = torch.exp(-torch.exp(self.decay + torch.tanh(xw @ self.decay_w1) @ self.decay_w2))
        shp = (b, t, self.h, self.n)
        y = wkv6_loop(r.view(shp), k.view(shp), v.view(shp), w.view(shp), self.faaaa)
        y = self.ln_x(y.reshape(b * t, c)).view(b, t, c)
        return self.o(y * g)


class ChannelMix(nn.Module):
    def __init__(self, c, f):
        super().__init__()
        self.maa_k = nn.Parameter(torch.rand(c) * 0.5)
        self.maa_r = nn.Parameter(torch.rand(c) * 0.5)
        self.k = nn.Linear(c, f, bias=False)
        self.r = nn.Linear(c, c, bias=False)
        self.v = nn.Linear(f, c, bias=False)

    def forward(self, x):
        xx = F.pad(x, (0, 0, 1, -1)) - x
        k = torch.relu(self.k(x + xx * self.maa_k)) ** 2
        return torch.sigmoid(self.r(x + xx * self.maa_r)) * self.v(k)


class Block(nn.Module):
    def __init__(self, i, cfg):
        super().__init__()
        c, n = cfg["hidden_size"], cfg["head_size"]
        eps = cfg["layer_norm_eps"]
        self.ln0 = nn.LayerNorm(c, eps=eps) if i == 0 else None
        self.ln1 = nn.LayerNorm(c, eps=eps)
        self.ln2 = nn.LayerNorm(c, eps=eps)
        self.att = TimeMix(c, c // n, n, cfg["mix_lora"], cfg["decay_lora"], cfg["group_norm_eps"])
        self.ffn = ChannelMix(c, cfg["ffn_size"])

    def forward(self, x):
        if self.ln0 is not None:
            x = self.ln0(x)
        x = x + self.att(self.ln1(x))
        return x + self.ffn(self.ln2(x))


class Rwkv6(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        c, vocab = cfg["hidden_size"], cfg["vocab_size"]
        self.emb = nn.Embedding(vocab, c)
        self.blocks = nn.ModuleList(Block(i, cfg) for i in range(cfg["num_layers"]))
        self.ln_out = nn.LayerNorm(c, eps=cfg["layer_norm_eps"])
        self.head = nn.Linear(c, vocab, bias=False)

    def forward(self, ids):
        x = self.emb(ids)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln_out(x))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = json.load(open(a.config))
    if cfg.get("architecture") != "rwkv6":
        raise SystemExit("this anchor trains RWKV-6 configs only")
    model = Rwkv6(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.01)
    vocab = cfg["vocab_size"]
    times = []
    for step in range(a.warmup + a.steps):
        ids = torch.randint(0, vocab, (a.rows, a.seq_len + 1))
        t0 = time.perf_counter()
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, vocab), ids[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        dt = time.perf_counter() - t0
        if step >= a.warmup:
            times.append(dt)
    med = statistics.median(times)
    print(json.dumps({
        "impl": "pytorch",
        "torch": torch.__version__,
        "threads": a.threads,
        "rows": a.rows,
        "seq_len": a.seq_len,
        "params": sum(p.numel() for p in model.parameters()),
        "median_step_s": med,
        "tokens_per_s": a.rows * a.seq_len / med,
    }))


if __name__ == "__main__":
    main()
