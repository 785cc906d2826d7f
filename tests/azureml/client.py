# client.py - call a scoring endpoint the way Azure ML's "consume a web service" docs show a
# Python client doing it (urllib.request, Bearer key), then once more with `requests` if it is
# installed. Used by tests/azureml.rs against scoregate in front of the real azmlinfsrv.
#
#   python3 client.py SCORING_URI KEY CA_FILE
#
# Prints each response body; exits 0 when every call answered 200, 1 otherwise.
import json
import ssl
import sys
import urllib.error
import urllib.request

if len(sys.argv) != 4:
    print(f"usage: {sys.argv[0]} SCORING_URI KEY CA_FILE", file=sys.stderr)
    sys.exit(2)
scoring_uri, api_key, ca_file = sys.argv[1:]

# Two flowers: a setosa and a virginica.
data = {"data": [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]]}
body = str.encode(json.dumps(data))
headers = {"Content-Type": "application/json", "Authorization": ("Bearer " + api_key)}

# The docs' client, with the endpoint's CA trusted instead of the system store.
context = ssl.create_default_context(cafile=ca_file)
req = urllib.request.Request(scoring_uri, body, headers)
try:
    response = urllib.request.urlopen(req, context=context, timeout=30)
    result = response.read()
    print("urllib:", response.status, result.decode("utf8", "replace"))
except urllib.error.HTTPError as error:
    print("The request failed with status code: " + str(error.code))
    print(error.info())
    print(error.read().decode("utf8", "ignore"))
    sys.exit(1)

try:
    import requests
except ImportError:
    print("requests: not installed, skipped")
    sys.exit(0)

resp = requests.post(scoring_uri, json=data, headers=headers, verify=ca_file, timeout=30)
print("requests:", resp.status_code, resp.text)
if resp.status_code != 200:
    print(resp.headers)
    sys.exit(1)
