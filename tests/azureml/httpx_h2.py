# httpx_h2.py - post a sample to a scoring endpoint COUNT times over ONE HTTP/2 connection with
# httpx (and its h2 stack, which ends a request body with an empty DATA frame of its own), once
# per concurrency level given. Used by tests/hardening_h2.rs.
#
#   python3 httpx_h2.py SCORING_URI KEY CA_FILE SAMPLE_JSON COUNT CONCURRENCY...
#
# Prints one line per level: "concurrency C: N ok, F failed, HTTP/2 in Ts" (and the first failures);
# exits 0 when every request of every level answered 200 over HTTP/2, 1 otherwise.
import asyncio
import ssl
import sys
import time

import httpx

if len(sys.argv) < 7:
    print(f"usage: {sys.argv[0]} SCORING_URI KEY CA_FILE SAMPLE_JSON COUNT CONCURRENCY...",
          file=sys.stderr)
    sys.exit(2)
scoring_uri, api_key, ca_file, sample = sys.argv[1:5]
count = int(sys.argv[5])
levels = [int(c) for c in sys.argv[6:]]
body = sample.encode()
headers = {"Content-Type": "application/json", "Authorization": "Bearer " + api_key}
# The test CA, trusted the way httpx 0.28 wants it (an SSLContext; `verify=<path>` is deprecated).
context = ssl.create_default_context(cafile=ca_file)


async def run(concurrency):
    started = time.monotonic()
    failures = []
    versions = set()
    # One client: httpx keeps one HTTP/2 connection per origin and multiplexes on it.
    async with httpx.AsyncClient(http2=True, verify=context, timeout=30) as client:

        async def post(i):
            try:
                r = await client.post(scoring_uri, content=body, headers=headers)
                versions.add(r.http_version)
                if r.status_code != 200 or "setosa" not in r.text:
                    failures.append(f"{i}: {r.status_code} {r.text[:200]}")
            except Exception as e:  # noqa: BLE001 - every failure is reported
                failures.append(f"{i}: {type(e).__name__}: {e}")

        # The first request alone opens the connection the others share.
        await post(0)
        todo = iter(range(1, count))

        async def worker():
            for i in todo:
                await post(i)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    version = ",".join(sorted(versions))
    took = time.monotonic() - started
    print(f"concurrency {concurrency}: {count - len(failures)} ok, {len(failures)} failed, "
          f"{version} in {took:.1f}s")
    for f in failures[:10]:
        print("  ", f)
    sys.stdout.flush()
    return not failures and versions == {"HTTP/2"}


async def main():
    ok = True
    for c in levels:
        ok = await run(c) and ok
    return ok


sys.exit(0 if asyncio.run(main()) else 1)
