"""Pieces the explain tests share: a store built by hand with a planted dictionary whose latent t fires exactly
on token id t, and a stub chat server speaking the OpenAI protocol on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

from mechscope.sae.relu import ReLUConfig, ReLUSAE

V, N, T, FIRST = 16, 24, 40, 1
RPC = T - FIRST
PLANTED = 7


def planted_store(path, vocab: int = V, contexts: int = N, seed: int = 0):
    """A store whose val row at token id t is scale(row) · e_t (d = vocab), scale(row) = 1 + (row mod 37) / 4
    (1 … 10): returns (store, tokens [N, T], acts [R, vocab])."""
    from mechscope.atomic import save_safetensors
    from mechscope.store import FORMAT, ActivationStore, sha256_file, write_manifest

    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (contexts, T), generator=g)
    ids = tokens[:, FIRST:].reshape(-1)  # [R] the token at each row
    scale = 1.0 + (torch.arange(ids.numel()) % 37).float() / 4
    acts = torch.nn.functional.one_hot(ids, vocab).float() * scale[:, None]
    shard = path / "val-00000.safetensors"
    save_safetensors(shard, {"acts/resid_post.0": acts, "tokens": tokens.int()})
    write_manifest(
        path,
        {
            "format": FORMAT,
            "version": 1,
            "complete": True,
            "sites": [{"name": "resid_post.0", "d": vocab}],
            "shards": [
                {
                    "file": shard.name,
                    "split": "val",
                    "contexts": contexts,
                    "rows": ids.numel(),
                    "bytes": shard.stat().st_size,
                    "sha256": sha256_file(shard),
                }
            ],
            "aliases": {},
            "context_length": T,
            "first_position": FIRST,
            "rows_per_context": RPC,
        },
    )
    return ActivationStore(path), tokens, acts


def planted_sae(vocab: int = V, dead: int = 0) -> ReLUSAE:
    """Latent t < vocab = ReLU(x_t): fires exactly on token id t, with the row's scale; ``dead`` more latents never
    fire (a zero encoder column)."""
    sae = ReLUSAE(ReLUConfig(d_in=vocab, latents=vocab + dead))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(vocab, vocab + dead))
        sae.W_dec.copy_(torch.eye(vocab + dead, vocab))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


def name(t: int) -> str:
    return f"[{t}]"


class Stub:
    """A chat server on a free port of 127.0.0.1; ``mode`` picks how it answers, ``seen`` records the requests."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.seen: list[tuple[str, dict, dict]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.seen.append((self.path, dict(self.headers), body))
                if stub.mode == "slow":
                    time.sleep(1.0)
                if stub.mode == "500":
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b"model exploded")
                    return
                prompt = body["messages"][0]["content"]
                if stub.mode == "garbage":
                    out = b"<html>not json</html>"
                elif stub.mode == "nologprobs" or not body.get("logprobs"):
                    out = json.dumps({"choices": [{"message": {"role": "assistant", "content": f"about {prompt}"}}]})
                elif stub.mode == "neither":
                    top = [{"token": "Maybe", "logprob": -0.1}, {"token": "Perhaps", "logprob": -3.0}]
                    out = json.dumps(
                        {"choices": [{"logprobs": {"content": [{"token": "Maybe", "top_logprobs": top}]}}]}
                    )
                else:  # "yes" likelier on prompts that say so; two spellings of each word
                    y = -0.2 if "yes" in prompt else -2.0
                    top = [
                        {"token": " Yes", "logprob": y},
                        {"token": "yes", "logprob": y - 1.0},
                        {"token": "No", "logprob": -1.0},
                        {"token": "Other", "logprob": -4.0},
                    ]
                    out = json.dumps({"choices": [{"logprobs": {"content": [{"token": "x", "top_logprobs": top}]}}]})
                data = out if isinstance(out, bytes) else out.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
