"""Reranking through the Jina / Cohere / TEI rerank APIs, with plain HTTP (no client library).

The server needs a rerank template: serve a Qwen3 reranker (built-in template), or start it with
`--rerank-template qwen3-reranker` or `--rerank-template FILE` (docs/RERANK.md):

    scorer serve --model Qwen/Qwen3-Reranker-0.6B
    python examples/rerank_client.py --base-url http://127.0.0.1:8000

Prints one JSON object: each endpoint's answer, and the status and body of a refused request.
"""

import argparse
import json
import urllib.error
import urllib.request

QUERY = "What is the capital of China?"
DOCUMENTS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other.",
    "Shanghai is the largest city of China.",
]


def post(base: str, path: str, body: dict, api_key: str | None) -> tuple[int, object]:
    headers = {"content-type": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(
        base + path, data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key", default=None, help="sent as a Bearer token")
    parser.add_argument("--model", default="default")
    args = parser.parse_args()
    base = args.base_url.rstrip("/")

    out = {}
    # Jina / vLLM: documents as strings or {"text": ...}; echoed by default.
    out["v1"] = post(base, "/v1/rerank", {
        "model": args.model,
        "query": QUERY,
        "documents": [DOCUMENTS[0], {"text": DOCUMENTS[1]}, DOCUMENTS[2]],
        "top_n": 2,
    }, args.api_key)[1]
    # Cohere v2: no echo by default, meta.billed_units; an instruction for Qwen3-Reranker.
    out["v2"] = post(base, "/v2/rerank", {
        "model": args.model,
        "query": QUERY,
        "documents": DOCUMENTS,
        "instruction": "Given a question, retrieve passages that answer it",
    }, args.api_key)[1]
    # TEI: every text, best first; truncate cuts texts over --max-prompt-tokens.
    out["tei"] = post(base, "/rerank", {
        "query": QUERY, "texts": DOCUMENTS, "return_text": True, "truncate": True,
    }, args.api_key)[1]
    # top_n must be positive: a 400 with the error body.
    status, body = post(base, "/v1/rerank", {
        "query": QUERY, "documents": DOCUMENTS, "top_n": 0,
    }, args.api_key)
    out["refused"] = {"status": status, "body": body}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
