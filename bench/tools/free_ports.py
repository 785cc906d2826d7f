"""Print N distinct free TCP ports on 127.0.0.1 (from 20000-31999), space-separated.

Used by the bench scripts: read -r A B C <<<"$(python3 bench/tools/free_ports.py 3)".
A port is free when a listener can bind it now; nothing holds it afterwards.
"""
import random
import socket
import sys

want = int(sys.argv[1])
got = []
while len(got) < want:
    p = random.randrange(20000, 32000)
    try:
        socket.create_server(("127.0.0.1", p)).close()
    except OSError:
        continue
    if p not in got:
        got.append(p)
print(*got)
