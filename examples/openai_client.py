"""Calling /v1/score with the official OpenAI Python client.

The client has no scoring method, but its generic `post` sends any JSON body to any path under
`base_url` with the client's auth headers and error handling:

    pip install openai
    python examples/openai_client.py --base-url http://127.0.0.1:8000/v1

Prints one JSON object: the score response, a chat scored with the model's chat template (with
the labels' log-probabilities), and the status and body of a refused request.
"""

import argparse
import json

import openai


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", default="unused", help="sent as a Bearer token")
    parser.add_argument("--model", default="default")
    parser.add_argument("--yes", type=int, default=9454, help="label id of 'Yes' (Qwen)")
    parser.add_argument("--no", type=int, default=2753, help="label id of 'No' (Qwen)")
    args = parser.parse_args()

    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0)

    # `cast_to=object` returns the decoded JSON as-is (the client has no model class for it).
    scored = client.post(
        "/score",
        cast_to=object,
        body={
            "model": args.model,
            "query": "The capital of France is",
            "items": [" Paris", " London", " Berlin"],
            "label_token_ids": [args.yes, args.no],
            "apply_softmax": True,
        },
    )

    # A chat instead of a query: the server renders it with the model's chat template and each
    # item starts the assistant's answer ("" scores the answer's first token). `token_logprobs`
    # are the labels' full-vocabulary log-probabilities (SGLang's `return_token_logprobs`).
    chat = client.post(
        "/score",
        cast_to=object,
        body={
            "model": args.model,
            "query_messages": [
                {"role": "user", "content": "Is Paris the capital of France? Answer Yes or No."}
            ],
            "items": [""],
            "label_token_ids": [args.yes, args.no],
            "apply_softmax": True,
            "return_token_logprobs": True,
        },
    )

    # A refused request raises the client's typed error, carrying our OpenAI-style body.
    try:
        client.post(
            "/score",
            cast_to=object,
            body={"model": args.model, "query": "q", "items": ["a"], "label_token_ids": []},
        )
        refused = None
    except openai.BadRequestError as err:
        refused = {"status": err.status_code, "body": err.body, "type": type(err).__name__}

    print(json.dumps({"scored": scored, "chat": chat, "refused": refused}))


if __name__ == "__main__":
    main()
