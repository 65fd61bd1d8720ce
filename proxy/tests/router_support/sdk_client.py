"""Drives the official `anthropic` Python SDK for the router's end-to-end test.

Makes one plain and one streaming `messages` call and prints what the SDK
returned as one JSON line. Two modes:

  via-router: the client is configured only by ANTHROPIC_BASE_URL (the way
              Claude Code and other agents are pointed at the router) and
              ANTHROPIC_API_KEY;
  direct:     base_url is the mock provider itself (HTTPS), trusting the
              test CA given in TEST_CA_FILE.
"""

import json
import os
import ssl
import sys

try:
    import anthropic
except ImportError:
    sys.stderr.write(
        "the `anthropic` Python package is missing: pip install anthropic==1.13.0 "
        "(cargo xtask setup installs it)\n"
    )
    sys.exit(3)

MODEL = "claude-haiku-4-5"
PROMPT = "hello through the lane router"


def make_client(mode):
    if mode == "via-router":
        return anthropic.Anthropic(max_retries=0, timeout=30.0)
    ctx = ssl.create_default_context(cafile=os.environ["TEST_CA_FILE"])
    return anthropic.Anthropic(
        base_url=os.environ["DIRECT_BASE_URL"],
        max_retries=0,
        timeout=30.0,
        http_client=anthropic.DefaultHttpxClient(verify=ctx),
    )


def main():
    mode = sys.argv[1]
    client = make_client(mode)
    out = {"sdk_version": anthropic.__version__}

    msg = client.messages.create(
        model=MODEL,
        max_tokens=64,
        messages=[{"role": "user", "content": PROMPT}],
    )
    out["plain"] = {
        "id": msg.id,
        "model": msg.model,
        "role": msg.role,
        "text": [b.text for b in msg.content],
        "stop_reason": msg.stop_reason,
        "usage": [msg.usage.input_tokens, msg.usage.output_tokens],
    }

    with client.messages.stream(
        model=MODEL,
        max_tokens=64,
        messages=[{"role": "user", "content": PROMPT}],
    ) as stream:
        chunks = list(stream.text_stream)
        final = stream.get_final_message()
    out["stream"] = {
        "chunks": chunks,
        "id": final.id,
        "model": final.model,
        "text": [b.text for b in final.content],
        "stop_reason": final.stop_reason,
        "usage": [final.usage.input_tokens, final.usage.output_tokens],
    }
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
